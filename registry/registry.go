package registry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// EventType names a registry change.
type EventType string

// Event types.
const (
	Joined    EventType = "joined"
	Restarted EventType = "restarted"
	Updated   EventType = "updated"
	Left      EventType = "left"
	Expired   EventType = "expired"
)

// EventTypes lists every event type, for pre-creating metric series.
var EventTypes = []EventType{Joined, Restarted, Updated, Left, Expired}

// Event is one change in a registry. For Left and Expired, Worker or Hive
// holds the last known entry (nil if the reader never saw one).
type Event struct {
	Type     EventType         `json:"event"`
	Kind     subjects.Kind     `json:"kind"`
	Key      string            `json:"key"`
	HiveID   string            `json:"hive_id"`
	WorkerID string            `json:"worker_id,omitempty"`
	At       time.Time         `json:"at"` // server time of the KV operation
	Revision uint64            `json:"revision"`
	Worker   *wire.WorkerEntry `json:"worker,omitempty"`
	Hive     *wire.HiveEntry   `json:"hive,omitempty"`
	// Previous is the status (workers) or health (hives) before an Updated event.
	Previous string `json:"previous,omitempty"`
}

// Config configures a Watcher.
type Config struct {
	Scheme subjects.Scheme
	// OnEvent is called for every event, from the watcher's goroutine, one at
	// a time, in KV order per bucket. It must not block for long. May be nil.
	OnEvent func(Event)
	// OnPut is called for every worker or hive value written, initial ones
	// included (used by the queen to learn what other queens accepted). May be nil.
	OnPut func(kind subjects.Kind, key string, meta wire.Meta, rec wire.Received)
	// OnRemove is called for every delete or purge. May be nil.
	OnRemove func(kind subjects.Kind, key string)
}

// Watcher mirrors both registry buckets and emits events. Its methods may be
// called concurrently.
type Watcher struct {
	cfg     Config
	mu      sync.RWMutex
	workers map[string]*wire.WorkerEntry
	hives   map[string]*wire.HiveEntry
	ready   chan struct{}
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
	bad     uint64 // undecodable values seen (guarded by mu)
}

// OpenBuckets returns the worker and hive buckets, or an error wrapping
// jetstream.ErrBucketNotFound if the queen has not created them yet.
func OpenBuckets(ctx context.Context, js jetstream.JetStream, s subjects.Scheme) (workers, hives jetstream.KeyValue, err error) {
	workers, err = js.KeyValue(ctx, s.WorkersBucket())
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", s.WorkersBucket(), err)
	}
	hives, err = js.KeyValue(ctx, s.HivesBucket())
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", s.HivesBucket(), err)
	}
	return workers, hives, nil
}

// Watch starts watching both buckets. It returns once the watches are set up;
// Ready is closed when the initial state of both buckets is loaded.
func Watch(ctx context.Context, js jetstream.JetStream, cfg Config) (*Watcher, error) {
	wkv, hkv, err := OpenBuckets(ctx, js, cfg.Scheme)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{
		cfg:     cfg,
		workers: map[string]*wire.WorkerEntry{},
		hives:   map[string]*wire.HiveEntry{},
		ready:   make(chan struct{}),
		cancel:  cancel,
	}
	ww, err := wkv.WatchAll(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch %s: %w", cfg.Scheme.WorkersBucket(), err)
	}
	hw, err := hkv.WatchAll(ctx)
	if err != nil {
		_ = ww.Stop()
		cancel()
		return nil, fmt.Errorf("watch %s: %w", cfg.Scheme.HivesBucket(), err)
	}
	var initial sync.WaitGroup
	initial.Add(2)
	go func() { initial.Wait(); close(w.ready) }()
	w.wg.Add(2)
	go w.run(ctx, js.Conn(), wkv, ww, subjects.KindWorker, &initial)
	go w.run(ctx, js.Conn(), hkv, hw, subjects.KindHive, &initial)
	return w, nil
}

// Ready is closed once the initial state of both buckets is loaded.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// WaitReady waits for Ready or ctx, returning ctx's error if it ends first.
func (w *Watcher) WaitReady(ctx context.Context) error {
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop ends both watches and waits for their goroutines. Safe to call twice.
func (w *Watcher) Stop() {
	w.once.Do(func() {
		w.cancel()
		w.wg.Wait()
	})
}

// rewatchTimeout bounds the creation of a replacement watch; rewatchRetry is
// the pause before trying again.
const (
	rewatchTimeout = 5 * time.Second
	rewatchRetry   = 250 * time.Millisecond
)

// run applies one bucket's updates. After a reconnect it replaces the watch
// with one resuming at the next revision: the ordered consumer under a KV
// watch notices a consumer lost with a restarted server only after two
// missed idle heartbeats (10-20 s), and the registry would be blind until
// then. A watch that ends on its own is replaced the same way.
func (w *Watcher) run(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, kw jetstream.KeyWatcher, kind subjects.Kind, initial *sync.WaitGroup) {
	defer w.wg.Done()
	defer func() { _ = kw.Stop() }()
	var reconnected chan nats.Status
	if nc != nil {
		reconnected = nc.StatusChanged(nats.CONNECTED)
		defer nc.RemoveStatusListener(reconnected)
	}
	loading := true
	done := func() {
		if loading {
			loading = false
			initial.Done()
		}
	}
	defer done()
	var (
		last    uint64 // revision of the last entry applied
		updates = kw.Updates()
		retry   <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
			retry = time.After(0)
		case <-retry:
			retry = nil
			var opts []jetstream.WatchOpt
			if !loading {
				opts = append(opts, jetstream.ResumeFromRevision(last+1))
			}
			rctx, cancel := context.WithTimeout(ctx, rewatchTimeout)
			nkw, err := kv.WatchAll(rctx, opts...)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					retry = time.After(rewatchRetry)
				}
				continue
			}
			_ = kw.Stop()
			kw, updates = nkw, nkw.Updates()
		case e, ok := <-updates:
			if !ok {
				updates, retry = nil, time.After(rewatchRetry)
				continue
			}
			if e == nil {
				done()
				continue
			}
			if e.Revision() <= last {
				continue // delivered again by a replacement watch
			}
			last = e.Revision()
			w.apply(kind, e, loading)
		}
	}
}

func (w *Watcher) apply(kind subjects.Kind, e jetstream.KeyValueEntry, initial bool) {
	ev := Event{Kind: kind, Key: e.Key(), At: e.Created(), Revision: e.Revision()}
	if kind == subjects.KindWorker {
		ev.HiveID, ev.WorkerID, _ = subjects.ParseWorkerKey(e.Key())
	} else {
		ev.HiveID = e.Key()
	}
	switch e.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		ev.Type = Left
		if e.Operation() == jetstream.KeyValuePurge {
			ev.Type = Expired
		}
		w.mu.Lock()
		var known bool
		if kind == subjects.KindWorker {
			ev.Worker, known = w.workers[e.Key()]
			delete(w.workers, e.Key())
		} else {
			ev.Hive, known = w.hives[e.Key()]
			delete(w.hives, e.Key())
		}
		w.mu.Unlock()
		if w.cfg.OnRemove != nil {
			w.cfg.OnRemove(kind, e.Key())
		}
		if known && !initial {
			w.emit(ev)
		}
		return
	}
	if kind == subjects.KindWorker {
		v, err := wire.DecodeWorkerEntry(e.Value())
		if err != nil {
			w.mu.Lock()
			w.bad++
			w.mu.Unlock()
			return
		}
		w.mu.Lock()
		prev := w.workers[e.Key()]
		w.workers[e.Key()] = v
		w.mu.Unlock()
		ev.Worker = v
		if w.cfg.OnPut != nil {
			w.cfg.OnPut(kind, e.Key(), v.Meta, v.Received)
		}
		switch {
		case initial:
			return
		case prev == nil:
			ev.Type = Joined
		case prev.InstanceID != v.InstanceID:
			ev.Type = Restarted
		case prev.Status != v.Status || prev.Health != v.Health || prev.ModelID != v.ModelID || prev.Device != v.Device:
			ev.Type, ev.Previous = Updated, string(prev.Status)
		default:
			return
		}
		w.emit(ev)
		return
	}
	v, err := wire.DecodeHiveEntry(e.Value())
	if err != nil {
		w.mu.Lock()
		w.bad++
		w.mu.Unlock()
		return
	}
	w.mu.Lock()
	prev := w.hives[e.Key()]
	w.hives[e.Key()] = v
	w.mu.Unlock()
	ev.Hive = v
	if w.cfg.OnPut != nil {
		w.cfg.OnPut(kind, e.Key(), v.Meta, v.Received)
	}
	switch {
	case initial:
		return
	case prev == nil:
		ev.Type = Joined
	case prev.InstanceID != v.InstanceID:
		ev.Type = Restarted
	case prev.Health != v.Health || len(prev.Workers) != len(v.Workers) || len(prev.GPUs) != len(v.GPUs):
		ev.Type, ev.Previous = Updated, string(prev.Health)
	default:
		return
	}
	w.emit(ev)
}

func (w *Watcher) emit(ev Event) {
	if w.cfg.OnEvent != nil {
		w.cfg.OnEvent(ev)
	}
}

// Workers returns the mirrored worker entries sorted by key. The entries are
// shared: do not modify them.
func (w *Watcher) Workers() []*wire.WorkerEntry {
	w.mu.RLock()
	out := make([]*wire.WorkerEntry, 0, len(w.workers))
	for _, v := range w.workers {
		out = append(out, v)
	}
	w.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		return subjects.WorkerKey(out[i].HiveID, out[i].WorkerID) < subjects.WorkerKey(out[j].HiveID, out[j].WorkerID)
	})
	return out
}

// Hives returns the mirrored hive entries sorted by ID. Do not modify them.
func (w *Watcher) Hives() []*wire.HiveEntry {
	w.mu.RLock()
	out := make([]*wire.HiveEntry, 0, len(w.hives))
	for _, v := range w.hives {
		out = append(out, v)
	}
	w.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].HiveID < out[j].HiveID })
	return out
}

// Sizes returns how many workers and hives the mirror holds.
func (w *Watcher) Sizes() (workers, hives int) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return len(w.workers), len(w.hives)
}

// Snapshot loads the current registry once, without keeping a watch: for
// `rbee status`. It returns an error wrapping jetstream.ErrBucketNotFound if
// the buckets do not exist yet.
func Snapshot(ctx context.Context, js jetstream.JetStream, s subjects.Scheme) ([]*wire.WorkerEntry, []*wire.HiveEntry, error) {
	w, err := Watch(ctx, js, Config{Scheme: s})
	if err != nil {
		return nil, nil, err
	}
	defer w.Stop()
	if err := w.WaitReady(ctx); err != nil {
		return nil, nil, fmt.Errorf("load registry: %w", err)
	}
	return w.Workers(), w.Hives(), nil
}

// IsNotFound reports whether err means the registry buckets do not exist.
func IsNotFound(err error) bool { return errors.Is(err, jetstream.ErrBucketNotFound) }
