package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"golang.org/x/time/rate"
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
	// Disconnected: the queen saw the entry's connection close without a goodbye.
	Disconnected EventType = "disconnected"
	// Reconnected: a disconnected entry beat again.
	Reconnected EventType = "reconnected"
	// Stalled: a busy worker's progress stopped growing.
	Stalled EventType = "stalled"
	// Recovered: a stalled worker's progress grew again.
	Recovered EventType = "recovered"
	// Refreshed is a new value with no change worth an event (the next beat
	// of the same instance). It is delivered only with Config.Refreshes.
	Refreshed EventType = "refreshed"
)

// EventTypes lists every event type that is delivered without
// Config.Refreshes, for pre-creating metric series.
var EventTypes = []EventType{Joined, Restarted, Updated, Left, Expired, Disconnected, Reconnected, Stalled, Recovered}

// Event is one change in a registry. For Left and Expired, Worker, Hive or
// Queen holds the last known entry (nil if the reader never saw one).
type Event struct {
	Type     EventType         `json:"event"`
	Kind     subjects.Kind     `json:"kind"`
	Key      string            `json:"key"`
	HiveID   string            `json:"hive_id,omitempty"`
	WorkerID string            `json:"worker_id,omitempty"`
	QueenID  string            `json:"queen_id,omitempty"`
	At       time.Time         `json:"at"` // server time of the KV operation
	Revision uint64            `json:"revision"`
	Worker   *wire.WorkerEntry `json:"worker,omitempty"`
	Hive     *wire.HiveEntry   `json:"hive,omitempty"`
	Queen    *wire.QueenEntry  `json:"queen,omitempty"`
	// Previous is the status (workers) or health (hives) before an Updated
	// event, and the liveness before a liveness event.
	Previous string `json:"previous,omitempty"`
	// Initial is true for a value loaded when the watch started (Refreshed
	// events with Config.Refreshes only).
	Initial bool `json:"initial,omitempty"`
	// Relisted is true for a Left or Expired found by re-listing the bucket
	// after a gap, its marker not seen (KVWatch): At is when it was found
	// and, where no marker was left, Revision that of the last value seen.
	Relisted bool `json:"relisted,omitempty"`
}

// Config configures a Watcher.
type Config struct {
	Scheme subjects.Scheme
	// OnEvent is called for every event, one call at a time across all
	// buckets (the watcher serialises them), in KV order per bucket. It must
	// not block for long: it holds up every bucket's updates. May be nil.
	OnEvent func(Event)
	// Refreshes also delivers Refreshed events: every value written, and the
	// values loaded at the start (Initial). The queen learns what other
	// queens accepted this way.
	Refreshes bool
	// Logger receives undecodable values (rate-limited); nil discards.
	Logger *slog.Logger
	// Known, if set, returns the decoded value of a put the caller already
	// holds: what value (key's value at revision rev) decodes to, as a
	// *wire.WorkerEntry, *wire.HiveEntry or *wire.QueenEntry (as kind), or
	// nil. The watcher then mirrors that value instead of decoding the put,
	// so a queen's own writes are neither decoded twice nor held twice. The
	// value is shared: no one may modify it. Called without the watcher's
	// locks held.
	Known func(kind subjects.Kind, key string, rev uint64, value []byte) any
}

// Watcher mirrors the registry buckets and emits events. Its methods may be
// called concurrently.
type Watcher struct {
	cfg     Config
	log     *slog.Logger
	mu      sync.RWMutex
	workers map[string]*item[wire.WorkerEntry]
	hives   map[string]*item[wire.HiveEntry]
	queens  map[string]*item[wire.QueenEntry]
	ready   chan struct{}
	cancel  context.CancelFunc
	watches []*KVWatch
	once    sync.Once
	emitMu  sync.Mutex // serialises OnEvent across the bucket goroutines
	bad     atomic.Uint64
	badLog  rate.Sometimes
	// expired keeps the entries that expired in the last expiredKeep (under
	// emitMu), oldest first in expiredQ: a goodbye's delete marker written
	// over an expiry's (a sender taken for dead that then said goodbye) is a
	// left event, with the entry the expiry removed.
	expired  map[kindKey]keptExpiry
	expiredQ []queuedExpiry
}

// keptExpiry is what an expiry removed, and when.
type keptExpiry struct {
	worker *wire.WorkerEntry
	hive   *wire.HiveEntry
	queen  *wire.QueenEntry
	rev    uint64
	at     time.Time
}

// queuedExpiry names a kept expiry, in the order they were kept.
type queuedExpiry struct {
	k   kindKey
	rev uint64
	at  time.Time
}

type kindKey struct {
	kind subjects.Kind
	key  string
}

// expiredKeep is how long after an entry expired its sender's goodbye
// still makes a left event.
const expiredKeep = 10 * time.Minute

// item is one mirrored value and its KV revision.
type item[T any] struct {
	v   *T
	rev uint64
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

// OpenQueens returns the queen bucket, or an error wrapping
// jetstream.ErrBucketNotFound if no queen of this version created it yet.
func OpenQueens(ctx context.Context, js jetstream.JetStream, s subjects.Scheme) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, s.QueensBucket())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.QueensBucket(), err)
	}
	return kv, nil
}

// Watch starts watching the worker, hive and (where it exists) queen
// buckets: New and Start in one, so it keeps the lifecycle contract
// trivially (there is no second Start; Stop is safe twice). It returns once
// the watches are set up; Ready is closed when the initial state is loaded.
func Watch(ctx context.Context, js jetstream.JetStream, cfg Config) (*Watcher, error) {
	wkv, hkv, err := OpenBuckets(ctx, js, cfg.Scheme)
	if err != nil {
		return nil, err
	}
	qkv, err := OpenQueens(ctx, js, cfg.Scheme)
	if err != nil && !IsNotFound(err) {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{
		cfg:     cfg,
		log:     log.With("component", "registry"),
		workers: map[string]*item[wire.WorkerEntry]{},
		hives:   map[string]*item[wire.HiveEntry]{},
		queens:  map[string]*item[wire.QueenEntry]{},
		ready:   make(chan struct{}),
		cancel:  cancel,
		badLog:  rate.Sometimes{Interval: 5 * time.Second},
	}
	type bucket struct {
		name string
		kind subjects.Kind
	}
	buckets := []bucket{{wkv.Bucket(), subjects.KindWorker}, {hkv.Bucket(), subjects.KindHive}}
	if qkv != nil {
		buckets = append(buckets, bucket{qkv.Bucket(), subjects.KindQueen})
	}
	for _, b := range buckets {
		kind := b.kind
		kw, err := WatchKV(ctx, js, b.name, KVWatchConfig{
			OnChange: func(c Change) { w.apply(kind, c) },
			Logger:   w.log,
		})
		if err != nil {
			w.Stop()
			return nil, err
		}
		w.watches = append(w.watches, kw)
	}
	go func() {
		for _, kw := range w.watches {
			<-kw.Ready()
		}
		close(w.ready)
	}()
	return w, nil
}

// Ready is closed once the initial state of every bucket is loaded.
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

// Stop ends the watches and waits for their goroutines. Safe to call twice.
func (w *Watcher) Stop() {
	w.once.Do(func() {
		w.cancel()
		for _, kw := range w.watches {
			kw.Stop()
		}
	})
}

// Relisted returns how many removals the watches found by re-listing a
// bucket after a gap rather than by seeing their marker (KVWatch).
func (w *Watcher) Relisted() uint64 {
	var n uint64
	for _, kw := range w.watches {
		n += kw.Relisted()
	}
	return n
}

// Undecodable returns how many values could not be decoded (each is also
// logged, rate-limited, and left out of the mirror).
func (w *Watcher) Undecodable() uint64 { return w.bad.Load() }

// apply mirrors one KV operation and emits its event. The emit lock is held
// across the mirror update and the callback so that, across buckets, events
// reach OnEvent one at a time and in the order the mirror changed.
func (w *Watcher) apply(kind subjects.Kind, e Change) {
	w.emitMu.Lock()
	defer w.emitMu.Unlock()
	initial := e.Initial
	ev := Event{Kind: kind, Key: e.Key, At: e.Created, Revision: e.Revision, Initial: initial, Relisted: e.Relisted}
	switch kind {
	case subjects.KindWorker:
		ev.HiveID, ev.WorkerID, _ = subjects.ParseWorkerKey(e.Key)
	case subjects.KindHive:
		ev.HiveID = e.Key
	case subjects.KindQueen:
		ev.QueenID = e.Key
	}
	if op := e.Op; op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge {
		ev.Type = Left
		if op == jetstream.KeyValuePurge {
			ev.Type = Expired
		}
		var known bool
		w.mu.Lock()
		switch kind {
		case subjects.KindWorker:
			var it *item[wire.WorkerEntry]
			if it, known = w.workers[e.Key]; known {
				ev.Worker = it.v
			}
			delete(w.workers, e.Key)
		case subjects.KindHive:
			var it *item[wire.HiveEntry]
			if it, known = w.hives[e.Key]; known {
				ev.Hive = it.v
			}
			delete(w.hives, e.Key)
		case subjects.KindQueen:
			var it *item[wire.QueenEntry]
			if it, known = w.queens[e.Key]; known {
				ev.Queen = it.v
			}
			delete(w.queens, e.Key)
		}
		w.mu.Unlock()
		switch {
		case initial:
			return
		case known && op == jetstream.KeyValuePurge:
			w.keepExpired(ev)
		case !known && op == jetstream.KeyValueDelete:
			w.pruneExpired(time.Now())
			var x keptExpiry
			if x, known = w.expired[kindKey{kind, e.Key}]; known {
				delete(w.expired, kindKey{kind, e.Key})
				ev.Worker, ev.Hive, ev.Queen = x.worker, x.hive, x.queen
			}
		}
		if known {
			w.emit(ev)
		}
		return
	}
	if len(w.expiredQ) > 0 {
		delete(w.expired, kindKey{kind, e.Key}) // back: a goodbye now leaves the new entry
		w.pruneExpired(time.Now())
	}
	var (
		err   error
		known any
	)
	if w.cfg.Known != nil {
		known = w.cfg.Known(kind, e.Key, e.Revision, e.Value)
	}
	switch kind {
	case subjects.KindWorker:
		v, _ := known.(*wire.WorkerEntry)
		if v == nil {
			v, err = wire.DecodeWorkerEntry(e.Value)
		}
		if err == nil {
			w.mu.Lock()
			prev := w.workers[e.Key]
			w.workers[e.Key] = &item[wire.WorkerEntry]{v, e.Revision}
			w.mu.Unlock()
			ev.Worker = v
			if prev != nil {
				ev.Type, ev.Previous = workerChange(prev.v, v)
			} else {
				ev.Type = Joined
			}
		}
	case subjects.KindHive:
		v, _ := known.(*wire.HiveEntry)
		if v == nil {
			v, err = wire.DecodeHiveEntry(e.Value)
		}
		if err == nil {
			w.mu.Lock()
			prev := w.hives[e.Key]
			w.hives[e.Key] = &item[wire.HiveEntry]{v, e.Revision}
			w.mu.Unlock()
			ev.Hive = v
			if prev != nil {
				ev.Type, ev.Previous = hiveChange(prev.v, v)
			} else {
				ev.Type = Joined
			}
		}
	case subjects.KindQueen:
		v, _ := known.(*wire.QueenEntry)
		if v == nil {
			v, err = wire.DecodeQueenEntry(e.Value)
		}
		if err == nil {
			w.mu.Lock()
			prev := w.queens[e.Key]
			w.queens[e.Key] = &item[wire.QueenEntry]{v, e.Revision}
			w.mu.Unlock()
			ev.Queen = v
			switch {
			case prev == nil:
				ev.Type = Joined
			case prev.v.InstanceID != v.InstanceID:
				ev.Type = Restarted
			case prev.v.State != v.State:
				ev.Type, ev.Previous = Updated, string(prev.v.State)
			default:
				ev.Type = Refreshed
			}
		}
	}
	if err != nil {
		n := w.bad.Add(1)
		w.badLog.Do(func() {
			w.log.Warn("undecodable registry value", "kind", kind, "key", e.Key, "revision", e.Revision,
				"err", err, "undecodable_total", n)
		})
		return
	}
	if initial {
		ev.Type = Refreshed
	}
	if ev.Type != Refreshed || w.cfg.Refreshes {
		w.emit(ev)
	}
}

// livenessChange returns the event for a change of liveness, or "".
func livenessChange(prev, cur wire.Liveness) EventType {
	p, c := prev.OrAlive(), cur.OrAlive()
	switch {
	case p == c:
		return ""
	case c == wire.LivenessDisconnected:
		return Disconnected
	case p == wire.LivenessDisconnected:
		return Reconnected
	case c == wire.LivenessStalled:
		return Stalled
	default:
		return Recovered
	}
}

func workerChange(prev, v *wire.WorkerEntry) (EventType, string) {
	switch {
	case prev.InstanceID != v.InstanceID:
		return Restarted, ""
	}
	if t := livenessChange(prev.Liveness, v.Liveness); t != "" {
		return t, string(prev.Liveness.OrAlive())
	}
	if prev.Status != v.Status || prev.Health != v.Health || prev.ModelID != v.ModelID || prev.Device != v.Device {
		return Updated, string(prev.Status)
	}
	return Refreshed, ""
}

func hiveChange(prev, v *wire.HiveEntry) (EventType, string) {
	switch {
	case prev.InstanceID != v.InstanceID:
		return Restarted, ""
	}
	if t := livenessChange(prev.Liveness, v.Liveness); t != "" {
		return t, string(prev.Liveness.OrAlive())
	}
	if prev.Health != v.Health || len(prev.Workers) != len(v.Workers) || prev.WorkersOmitted != v.WorkersOmitted || len(prev.GPUs) != len(v.GPUs) {
		return Updated, string(prev.Health)
	}
	return Refreshed, ""
}

func (w *Watcher) emit(ev Event) {
	if w.cfg.OnEvent != nil {
		w.cfg.OnEvent(ev)
	}
}

// Workers returns the mirrored worker entries sorted by key. The entries are
// shared: do not modify them.
func (w *Watcher) Workers() []*wire.WorkerEntry {
	type kv struct {
		key string
		v   *wire.WorkerEntry
	}
	w.mu.RLock()
	all := make([]kv, 0, len(w.workers))
	for k, it := range w.workers {
		all = append(all, kv{k, it.v})
	}
	w.mu.RUnlock()
	slices.SortFunc(all, func(a, b kv) int { return strings.Compare(a.key, b.key) })
	out := make([]*wire.WorkerEntry, len(all))
	for i := range all {
		out[i] = all[i].v
	}
	return out
}

// WorkersAnyOrder returns the mirrored worker entries in no particular
// order, for what aggregates them (the fleet's /metrics families): Workers
// sorts them by key, 0.4 s of CPU at a million entries. Do not modify them.
func (w *Watcher) WorkersAnyOrder() []*wire.WorkerEntry {
	w.mu.RLock()
	defer w.mu.RUnlock()
	out := make([]*wire.WorkerEntry, 0, len(w.workers))
	for _, it := range w.workers {
		out = append(out, it.v)
	}
	return out
}

// Hives returns the mirrored hive entries sorted by ID. Do not modify them.
func (w *Watcher) Hives() []*wire.HiveEntry {
	w.mu.RLock()
	out := make([]*wire.HiveEntry, 0, len(w.hives))
	for _, it := range w.hives {
		out = append(out, it.v)
	}
	w.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].HiveID < out[j].HiveID })
	return out
}

// Queens returns the mirrored queen entries sorted by ID (none when the
// queen bucket does not exist). Do not modify them.
func (w *Watcher) Queens() []*wire.QueenEntry {
	w.mu.RLock()
	out := make([]*wire.QueenEntry, 0, len(w.queens))
	for _, it := range w.queens {
		out = append(out, it.v)
	}
	w.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].QueenID < out[j].QueenID })
	return out
}

// Worker returns the mirrored entry of a worker key and its KV revision, or
// false if the mirror has none. Do not modify the entry.
func (w *Watcher) Worker(key string) (*wire.WorkerEntry, uint64, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if it := w.workers[key]; it != nil {
		return it.v, it.rev, true
	}
	return nil, 0, false
}

// Hive returns the mirrored entry of a hive and its KV revision, or false.
func (w *Watcher) Hive(key string) (*wire.HiveEntry, uint64, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if it := w.hives[key]; it != nil {
		return it.v, it.rev, true
	}
	return nil, 0, false
}

// Liveness counts the mirrored workers and hives by liveness (an absent
// value counts as alive), without copying or sorting them.
func (w *Watcher) Liveness() (workers, hives map[wire.Liveness]int) {
	workers, hives = map[wire.Liveness]int{}, map[wire.Liveness]int{}
	w.mu.RLock()
	defer w.mu.RUnlock()
	for _, it := range w.workers {
		workers[it.v.Liveness.OrAlive()]++
	}
	for _, it := range w.hives {
		hives[it.v.Liveness.OrAlive()]++
	}
	return workers, hives
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

// keepExpired keeps what ev, an expiry, removed, for expiredKeep. emitMu
// held.
func (w *Watcher) keepExpired(ev Event) {
	now := time.Now()
	w.pruneExpired(now)
	if w.expired == nil {
		w.expired = map[kindKey]keptExpiry{}
	}
	k := kindKey{ev.Kind, ev.Key}
	w.expired[k] = keptExpiry{worker: ev.Worker, hive: ev.Hive, queen: ev.Queen, rev: ev.Revision, at: now}
	w.expiredQ = append(w.expiredQ, queuedExpiry{k, ev.Revision, now})
}

// pruneExpired lets go of the expiries kept longer than expiredKeep.
// emitMu held.
func (w *Watcher) pruneExpired(now time.Time) {
	for len(w.expiredQ) > 0 && now.Sub(w.expiredQ[0].at) > expiredKeep {
		q := w.expiredQ[0]
		w.expiredQ[0] = queuedExpiry{}
		w.expiredQ = w.expiredQ[1:]
		if x, ok := w.expired[q.k]; ok && x.rev == q.rev {
			delete(w.expired, q.k)
		}
	}
	if len(w.expiredQ) == 0 {
		w.expiredQ = nil // let go of the array
	}
}
