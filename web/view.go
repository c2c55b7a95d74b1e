package web

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// View feeds the live page: it mirrors the registry and fans its changes
// out to every connected page. Its methods may be called concurrently.
type View struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	watcher *registry.Watcher
	clients map[*client]struct{}
	// recent holds the last cfg.Events events: oldest first until it is
	// full, then a ring whose oldest is at next.
	recent  []wire.Event
	next    int
	dirty   map[subjects.Kind]map[string]struct{} // keys changed since the last update
	dropped uint64                                // pages disconnected for falling behind

	wake chan struct{} // a change is waiting to be flushed
	wg   sync.WaitGroup
}

// client is one connected page.
type client struct {
	ch     chan []byte   // framed SSE messages
	gone   chan struct{} // closed when the page is dropped or the view stops
	filter events.Filter // the registry events it asked for
}

// New returns a View, or an error wrapping ErrInvalidConfig.
func New(cfg Config) (*View, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &View{
		cfg:     cfg,
		log:     log.With("component", "web"),
		clients: map[*client]struct{}{},
		dirty: map[subjects.Kind]map[string]struct{}{
			subjects.KindWorker: {}, subjects.KindHive: {}, subjects.KindQueen: {},
		},
		wake: make(chan struct{}, 1),
	}, nil
}

// Start watches the registry and returns once its initial state is loaded,
// or with the first error (wrapping lifecycle.ErrStarted if called twice).
// The view runs until Stop or ctx ends.
func (v *View) Start(ctx context.Context) error {
	v.mu.Lock()
	if v.started || v.stopped {
		v.mu.Unlock()
		return fmt.Errorf("web view: %w", lifecycle.ErrStarted)
	}
	v.started = true
	runCtx, cancel := context.WithCancel(ctx)
	v.cancel = cancel
	v.mu.Unlock()

	w, owned, err := v.cfg.Watcher, false, error(nil)
	if w == nil {
		owned = true
		w, err = registry.Watch(runCtx, v.cfg.JetStream, registry.Config{
			Scheme:    v.cfg.Scheme,
			OnEvent:   v.OnEvent,
			Refreshes: true, // every beat: VRAM, slots and ages change without an event
			Logger:    v.log,
		})
	}
	if err == nil {
		if err = w.WaitReady(ctx); err != nil && owned {
			w.Stop()
		}
	}
	if err != nil {
		cancel()
		return fmt.Errorf("web view: %w", err)
	}
	v.mu.Lock()
	if v.stopped { // Stop ran while the registry loaded
		v.mu.Unlock()
		if owned {
			w.Stop()
		}
		return nil
	}
	v.watcher = w
	v.wg.Add(1)
	v.mu.Unlock()
	go v.run(runCtx, w, owned)
	return nil
}

// Stop disconnects every page, ends the watch and waits for it. Safe to call
// before Start and twice.
func (v *View) Stop() {
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		return
	}
	v.stopped = true
	if v.cancel != nil {
		v.cancel()
	}
	for c := range v.clients {
		close(c.gone)
		delete(v.clients, c)
	}
	v.mu.Unlock()
	v.wg.Wait()
}

// Dropped returns how many pages were disconnected for falling behind.
func (v *View) Dropped() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.dropped
}

// run flushes coalesced changes until ctx ends, then stops the watch and
// disconnects the pages (ctx may end without Stop).
func (v *View) run(ctx context.Context, w *registry.Watcher, owned bool) {
	defer v.wg.Done()
	defer func() {
		if owned {
			w.Stop()
		}
		v.mu.Lock()
		for c := range v.clients {
			close(c.gone)
			delete(v.clients, c)
		}
		v.mu.Unlock()
	}()
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.wake:
		}
		v.flush(w)
		pause.Reset(v.cfg.FlushEvery)
		select {
		case <-ctx.Done():
			return
		case <-pause.C:
		}
	}
}

// update is the "update" message: the current value of every entry that
// changed since the last one, and the keys of those that are gone.
type update struct {
	Workers        []*wire.WorkerEntry `json:"workers"`
	Hives          []*wire.HiveEntry   `json:"hives"`
	Queens         []*wire.QueenEntry  `json:"queens"`
	RemovedWorkers []string            `json:"removed_workers"`
	RemovedHives   []string            `json:"removed_hives"`
	RemovedQueens  []string            `json:"removed_queens"`
}

// snapshot is the first message a page receives.
type snapshot struct {
	NowMs   int64               `json:"now_ms"` // queen clock, for ages
	Workers []*wire.WorkerEntry `json:"workers"`
	Hives   []*wire.HiveEntry   `json:"hives"`
	Queens  []*wire.QueenEntry  `json:"queens"`
	Events  []wire.Event        `json:"events"` // oldest first
}

// flush sends one update with the dirty entries. It holds v.mu throughout,
// so that a page connecting meanwhile gets either this update or a snapshot
// at least as new. The watcher calls back into v without holding its mirror
// lock, so reading the mirror here cannot deadlock.
func (v *View) flush(w *registry.Watcher) {
	v.mu.Lock()
	defer v.mu.Unlock()
	u := update{Workers: []*wire.WorkerEntry{}, Hives: []*wire.HiveEntry{}, Queens: []*wire.QueenEntry{},
		RemovedWorkers: []string{}, RemovedHives: []string{}, RemovedQueens: []string{}}
	n := 0
	for k := range v.dirty[subjects.KindWorker] {
		if e, _, ok := w.Worker(k); ok {
			u.Workers = append(u.Workers, e)
		} else {
			u.RemovedWorkers = append(u.RemovedWorkers, k)
		}
		n++
	}
	for k := range v.dirty[subjects.KindHive] {
		if e, _, ok := w.Hive(k); ok {
			u.Hives = append(u.Hives, e)
		} else {
			u.RemovedHives = append(u.RemovedHives, k)
		}
		n++
	}
	if len(v.dirty[subjects.KindQueen]) > 0 {
		present := map[string]bool{}
		for _, e := range w.Queens() {
			present[e.QueenID] = true
			if _, ok := v.dirty[subjects.KindQueen][e.QueenID]; ok {
				u.Queens = append(u.Queens, e)
			}
		}
		for k := range v.dirty[subjects.KindQueen] {
			if !present[k] {
				u.RemovedQueens = append(u.RemovedQueens, k)
			}
			n++
		}
	}
	for _, d := range v.dirty {
		clear(d)
	}
	if n > 0 {
		v.broadcastLocked("update", u)
	}
}

// OnEvent marks the event's entry for the next update and, for a change
// worth an event, keeps it and sends it to the pages at once. It is the
// watch's callback (Config.Watcher: the owner's to call, one event at a
// time).
func (v *View) OnEvent(ev registry.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	// With no page connected nothing is marked: a page that connects gets
	// a snapshot of every entry.
	if d := v.dirty[ev.Kind]; d != nil && len(v.clients) > 0 {
		d[ev.Key] = struct{}{}
		select {
		case v.wake <- struct{}{}:
		default:
		}
	}
	if ev.Type == registry.Refreshed {
		return
	}
	e := eventOf(ev)
	if v.cfg.Events > 0 {
		if len(v.recent) < v.cfg.Events {
			v.recent = append(v.recent, e)
		} else {
			// Overwrite the oldest: one event costs the same whatever
			// cfg.Events is (a burst of expiries at a million workers).
			v.recent[v.next] = e
			v.next = (v.next + 1) % len(v.recent)
		}
	}
	v.broadcastLocked("event", e, e.Event)
}

// eventOf turns a registry event into its published form, filled from the
// entry it carries.
func eventOf(ev registry.Event) wire.Event {
	e := wire.Event{
		V: wire.SchemaVersion, Event: string(ev.Type), Kind: string(ev.Kind), Key: ev.Key,
		HiveID: ev.HiveID, WorkerID: ev.WorkerID, AtMs: ev.At.UnixMilli(), Revision: ev.Revision,
		Previous: ev.Previous,
	}
	switch {
	case ev.Worker != nil:
		e.InstanceID, e.Status, e.ModelID = ev.Worker.InstanceID, string(ev.Worker.Status), ev.Worker.ModelID
		e.Health, e.HealthReason, e.Liveness = string(ev.Worker.Health), ev.Worker.HealthReason, string(ev.Worker.Liveness)
	case ev.Hive != nil:
		e.InstanceID = ev.Hive.InstanceID
		e.Health, e.HealthReason, e.Liveness = string(ev.Hive.Health), ev.Hive.HealthReason, string(ev.Hive.Liveness)
	case ev.Queen != nil:
		e.InstanceID, e.QueenID, e.Status = ev.Queen.InstanceID, ev.Queen.QueenID, string(ev.Queen.State)
		e.HealthReason = ev.Queen.Reason
	}
	return e
}

// broadcastLocked frames one message and queues it for every page; a page
// whose queue is full is dropped. v.mu must be held.
func (v *View) broadcastLocked(name string, payload any, eventType ...string) {
	if len(v.clients) == 0 {
		return
	}
	msg, err := frame(name, payload)
	if err != nil {
		v.log.Error("encode message", "event", name, "err", err)
		return
	}
	for c := range v.clients {
		if len(eventType) > 0 && !c.filter.Match(eventType[0]) {
			continue
		}
		select {
		case c.ch <- msg:
		default:
			v.dropped++
			close(c.gone)
			delete(v.clients, c)
			v.log.Warn("page fell behind; disconnected", "buffer", v.cfg.ClientBuffer)
		}
	}
}

// subscribe registers a page that asked for the events f keeps and returns
// it with its snapshot message.
func (v *View) subscribe(f events.Filter) (*client, []byte, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.watcher == nil || v.stopped {
		return nil, nil, ErrNotRunning
	}
	s := snapshot{
		NowMs:   time.Now().UnixMilli(),
		Workers: v.watcher.Workers(),
		Hives:   v.watcher.Hives(),
		Queens:  v.watcher.Queens(),
		Events:  []wire.Event{},
	}
	for _, part := range [][]wire.Event{v.recent[v.next:], v.recent[:v.next]} { // oldest first
		for _, e := range part {
			if f.Match(e.Event) {
				s.Events = append(s.Events, e)
			}
		}
	}
	msg, err := frame("snapshot", s)
	if err != nil {
		return nil, nil, err
	}
	c := &client{ch: make(chan []byte, v.cfg.ClientBuffer), gone: make(chan struct{}), filter: f}
	v.clients[c] = struct{}{}
	return c, msg, nil
}

func (v *View) unsubscribe(c *client) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.clients[c]; ok {
		close(c.gone)
		delete(v.clients, c)
	}
}

// frame returns one server-sent event: "event: <name>\ndata: <json>\n\n".
// JSON has no raw newlines, so one data line suffices.
func frame(name string, payload any) ([]byte, error) {
	b, err := json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(name)+len(b)+16)
	out = append(out, "event: "...)
	out = append(out, name...)
	out = append(out, "\ndata: "...)
	out = append(out, b...)
	out = append(out, "\n\n"...)
	return out, nil
}
