package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/engine"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// Config configures a Worker.
type Config struct {
	Prefix   string
	HiveID   string
	WorkerID string
	Interval time.Duration
	Jitter   float64
	ModelID  string
	Device   string
	URL      string
	// Version is the software version the beat reports. With Engine, leave
	// it empty: the engine's own version is beaten once read, and a
	// version that is not the engine's is never shown as if it were.
	Version    string
	SlotsTotal int
	// PID is the engine's process ID on this machine, so that the hive can
	// tell the worker's GPU memory; 0 leaves it out.
	PID int
	// Engine, when set, probes the inference engine and beats what it
	// reports (its OnState is the Worker's own). Nil beats what the
	// setters say.
	Engine *engine.Config
	// ExitLinger is how long Exited waits after the last beat reached the
	// server before the goodbye may follow. The registry keeps one revision
	// per key, so a goodbye right behind the last beat can replace it before
	// a watcher has read it, and the watcher never sees the engine stopped.
	ExitLinger time.Duration
	// InstanceID is random per start when empty.
	InstanceID string
	Logger     *slog.Logger
}

// DefaultConfig returns a Config for one worker with the contract's defaults
// (30 s interval, ±10 % jitter, one slot) and a 250 ms exit linger (a KV
// watcher reads a write within about 150 ms on the 2-core test machine).
func DefaultConfig(hiveID, workerID string) Config {
	return Config{Prefix: subjects.DefaultPrefix, HiveID: hiveID, WorkerID: workerID,
		Interval: 30 * time.Second, Jitter: 0.10, Device: "cpu", SlotsTotal: 1, ExitLinger: 250 * time.Millisecond}
}

// Validate returns an error wrapping ErrInvalidConfig (and subjects.ErrInvalidID
// for a bad ID) if c cannot work. Ranges are given in milliseconds.
func (c Config) Validate() error {
	if _, err := subjects.New(c.Prefix); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := subjects.ValidateID("hive id", c.HiveID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := subjects.ValidateID("worker id", c.WorkerID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if ms := c.Interval.Milliseconds(); c.Interval%time.Millisecond != 0 || ms < wire.MinIntervalMs || ms > wire.MaxIntervalMs {
		return fmt.Errorf("%w: interval %s: want %dms to %dms", ErrInvalidConfig, c.Interval, wire.MinIntervalMs, wire.MaxIntervalMs)
	}
	if c.Jitter < 0 || c.Jitter >= 1 {
		return fmt.Errorf("%w: jitter %v outside [0, 1)", ErrInvalidConfig, c.Jitter)
	}
	if c.SlotsTotal < 0 {
		return fmt.Errorf("%w: slots %d", ErrInvalidConfig, c.SlotsTotal)
	}
	if c.PID < 0 {
		return fmt.Errorf("%w: pid %d", ErrInvalidConfig, c.PID)
	}
	if c.ExitLinger < 0 || c.ExitLinger > 10*time.Second {
		return fmt.Errorf("%w: exit linger %s: want 0s to 10s", ErrInvalidConfig, c.ExitLinger)
	}
	if c.Engine != nil {
		if err := c.Engine.Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	probe := wire.Worker{Meta: wire.Meta{Health: wire.Healthy}, HiveID: c.HiveID, WorkerID: c.WorkerID,
		Status: wire.StatusStarting, ModelID: c.ModelID, Device: c.Device, URL: c.URL, Version: c.Version, SlotsTotal: c.SlotsTotal}
	probe.Stamp("probe", 1, 0, c.Interval.Milliseconds())
	if err := probe.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Worker publishes one worker's heartbeats. Its methods may be called
// concurrently. It keeps the lifecycle contract (package lifecycle).
type Worker struct {
	nc     *nats.Conn
	cfg    Config
	pcfg   publisher.Config
	log    *slog.Logger
	prober *engine.Prober

	mu        sync.Mutex
	state     wire.Worker
	gen       uint64 // bumped by every state change that must reach a beat
	builtGen  uint64 // gen of the last snapshot built
	builtSent uint64 // the publisher's Sent count when that snapshot was built

	pubMu    sync.Mutex // guards pub, pastSent
	pub      *publisher.Publisher[*wire.Worker]
	pastSent publisher.Stats // counts of instances replaced by Restart

	life    sync.Mutex
	started bool
	stopped bool
	ctx     context.Context
}

// New returns a Worker in status "starting". It returns an error wrapping
// ErrInvalidConfig for a bad Config.
func New(nc *nats.Conn, cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s, _ := subjects.New(cfg.Prefix)
	w := &Worker{nc: nc, cfg: cfg, log: log.With("worker", cfg.WorkerID), state: wire.Worker{
		Meta:     wire.Meta{Health: wire.Healthy},
		HiveID:   cfg.HiveID,
		WorkerID: cfg.WorkerID,
		Status:   wire.StatusStarting,
		ModelID:  cfg.ModelID, Device: cfg.Device, URL: cfg.URL, Version: cfg.Version,
		SlotsTotal: cfg.SlotsTotal, PID: cfg.PID,
	}}
	w.pcfg = publisher.DefaultConfig(s.Worker(cfg.HiveID, cfg.WorkerID), wire.SchemaWorker)
	w.pcfg.Interval, w.pcfg.Jitter, w.pcfg.InstanceID = cfg.Interval, cfg.Jitter, cfg.InstanceID
	if cfg.Logger != nil {
		w.pcfg.Logger = w.log
	}
	var err error
	if w.pub, err = publisher.New(nc, w.pcfg, w.snapshot); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if cfg.Engine != nil {
		ec := *cfg.Engine
		ec.OnState = w.applyEngine
		if ec.Logger == nil {
			ec.Logger = w.log
		}
		if w.prober, err = engine.NewProber(ec); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		w.state.Engine = string(ec.Spec.Kind)
	}
	return w, nil
}

func (w *Worker) publisher() *publisher.Publisher[*wire.Worker] {
	w.pubMu.Lock()
	defer w.pubMu.Unlock()
	return w.pub
}

// snapshot builds one beat: the state plus, with an engine, how fresh its
// reading is. It is called by the publisher, one call at a time.
func (w *Worker) snapshot() *wire.Worker {
	var fresh engine.State
	if w.prober != nil {
		fresh = w.prober.Latest()
	}
	sent := w.publisher().Stats().Sent
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.state
	if w.prober != nil {
		s.EngineStale = fresh.Stale
		if !fresh.MetricsAt.IsZero() {
			s.EngineAgeMs = max(0, time.Since(fresh.MetricsAt).Milliseconds())
		}
	}
	w.builtGen, w.builtSent = w.gen, sent
	return &s
}

// InstanceID returns the current instance ID; Restart changes it.
func (w *Worker) InstanceID() string { return w.publisher().InstanceID() }

// Stats returns the publisher's counts, over every instance of this Worker.
func (w *Worker) Stats() publisher.Stats {
	w.pubMu.Lock()
	defer w.pubMu.Unlock()
	s := w.pub.Stats()
	return publisher.Stats{Sent: s.Sent + w.pastSent.Sent, Failed: s.Failed + w.pastSent.Failed}
}

// State returns a copy of the state the next beat will carry (before the
// publisher stamps it).
func (w *Worker) State() wire.Worker {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

// Start begins beating (the first beat at once) and, with an engine,
// probing it. A second Start, or Start after Stop, returns an error
// wrapping lifecycle.ErrStarted.
func (w *Worker) Start(ctx context.Context) error {
	w.life.Lock()
	defer w.life.Unlock()
	if w.started || w.stopped {
		return fmt.Errorf("worker %s: %w", w.cfg.WorkerID, lifecycle.ErrStarted)
	}
	w.started, w.ctx = true, ctx
	if w.prober != nil {
		if err := w.prober.Start(ctx); err != nil {
			return err
		}
	}
	return w.publisher().Start(ctx)
}

// change applies f to the state under the lock and, if it reports a
// change, publishes a beat at once.
func (w *Worker) change(f func(s *wire.Worker) bool) {
	w.mu.Lock()
	changed := f(&w.state)
	if changed {
		w.gen++
	}
	w.mu.Unlock()
	if changed {
		w.publisher().Trigger()
	}
}

// SetStatus changes the worker's status and health and, if anything changed,
// publishes a beat at once. It returns an error wrapping ErrInvalidConfig for
// an unknown status or health.
func (w *Worker) SetStatus(st wire.Status, h wire.Health, reason string) error {
	if !st.Valid() || !h.Valid() || len(reason) > wire.MaxTextLen {
		return fmt.Errorf("%w: status %q health %q", ErrInvalidConfig, st, h)
	}
	w.change(func(s *wire.Worker) bool {
		changed := s.Status != st || s.Health != h || s.HealthReason != reason
		s.Status, s.Health, s.HealthReason = st, h, reason
		return changed
	})
	return nil
}

// SetSlotsBusy records how many slots are busy, at most SlotsTotal; it goes
// out with the next beat.
func (w *Worker) SetSlotsBusy(n int) {
	w.mu.Lock()
	w.state.SlotsBusy = max(0, min(n, w.state.SlotsTotal))
	w.mu.Unlock()
}

// SetRequestsWaiting records the engine's queue length; a negative n leaves
// requests_waiting out. It goes out with the next beat.
func (w *Worker) SetRequestsWaiting(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n < 0 {
		w.state.RequestsWaiting = nil
		return
	}
	w.state.RequestsWaiting = &n
}

// SetProgress records the worker's completed work (e.g. tokens generated),
// which the queen watches to tell a busy worker from a hung one. It returns
// an error wrapping ErrProgressBackwards, and changes nothing, for a value
// below the current one: a counter that starts again is a new instance
// (Restart).
func (w *Worker) SetProgress(n uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p := w.state.Progress; p != nil && n < *p {
		return fmt.Errorf("%w: %d after %d", ErrProgressBackwards, n, *p)
	}
	w.state.Progress = &n
	return nil
}

// AddProgress adds d to the worker's progress and returns the new value.
func (w *Worker) AddProgress(d uint64) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n uint64
	if w.state.Progress != nil {
		n = *w.state.Progress
	}
	n += d
	w.state.Progress = &n
	return n
}

// SetModel records the model and version the engine reports; an empty
// value keeps the current one. A change publishes a beat at once.
func (w *Worker) SetModel(model, version string) {
	w.change(func(s *wire.Worker) bool {
		changed := false
		if model != "" && model != s.ModelID && len(model) <= wire.MaxTextLen {
			s.ModelID, changed = model, true
		}
		if version != "" && version != s.Version && len(version) <= wire.MaxTextLen {
			s.Version, changed = version, true
		}
		return changed
	})
}

// SetPID records the engine's process ID (0 leaves pid out); it goes out
// with the next beat.
func (w *Worker) SetPID(pid int) {
	w.mu.Lock()
	w.state.PID = max(0, pid)
	w.mu.Unlock()
}

// Restart starts beating as a new instance, without a goodbye: the engine
// restarted, so the queen must see a restart, not a departure. Progress is
// cleared, since it only grows within an instance (with an engine, the new
// instance starts from the engine's new counter). It returns an error
// wrapping ErrNotRunning unless the Worker is started and not stopped.
func (w *Worker) Restart() error { return w.restart(nil) }

// restart is Restart with the new instance's first progress, so that its
// first beat already carries the engine's new counter.
func (w *Worker) restart(progress *uint64) error {
	w.life.Lock()
	defer w.life.Unlock()
	if !w.started || w.stopped {
		return fmt.Errorf("restart: %w", ErrNotRunning)
	}
	pc := w.pcfg
	pc.InstanceID = publisher.NewInstanceID()
	np, err := publisher.New(w.nc, pc, w.snapshot)
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	w.mu.Lock()
	w.state.Progress = progress
	w.mu.Unlock()
	w.pubMu.Lock()
	old := w.pub
	w.pub = np
	w.pubMu.Unlock()
	old.Abandon()
	w.pubMu.Lock()
	s := old.Stats()
	w.pastSent.Sent += s.Sent
	w.pastSent.Failed += s.Failed
	w.pubMu.Unlock()
	w.log.Info("engine restarted, beating as a new instance", "instance", pc.InstanceID)
	return np.Start(w.ctx)
}

// Exited reports that the engine process ended on its own: it sets status
// stopped, health unhealthy with reason, and waits, within ctx, until a
// beat carrying that state has reached the server, and then ExitLinger.
// Stop then sends the goodbye, which carries the same state. When the
// context Start was given has ended, the beat loop has too, and Exited
// returns at once: the goodbye alone carries the exit. It returns an error
// wrapping ErrNotRunning when the Worker is not running, or ctx's error.
func (w *Worker) Exited(ctx context.Context, reason string) error {
	w.life.Lock()
	running := w.started && !w.stopped
	w.life.Unlock()
	if !running {
		return fmt.Errorf("exited: %w", ErrNotRunning)
	}
	if w.prober != nil {
		w.prober.Stop() // its next reading must not overwrite the exit
	}
	if len(reason) > wire.MaxTextLen {
		reason = reason[:wire.MaxTextLen]
	}
	var target uint64
	w.mu.Lock()
	w.state.Status, w.state.Health, w.state.HealthReason = wire.StatusStopped, wire.Unhealthy, reason
	w.state.SlotsBusy = 0
	w.gen++
	target = w.gen
	w.mu.Unlock()
	w.publisher().Trigger()
	if w.ctx.Err() != nil {
		return nil // the beat loop has ended: the goodbye carries the exit
	}
	if err := w.waitBeat(ctx, target); err != nil {
		return err
	}
	if err := natsconn.Flush(ctx, w.nc); err != nil {
		return fmt.Errorf("last beat not confirmed: %w", err)
	}
	t := time.NewTimer(w.cfg.ExitLinger)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitBeat waits until a snapshot of generation gen or later has been sent.
// The publisher has no completion signal for a triggered beat, so this
// polls its counts every few milliseconds; it is used only on the way out.
func (w *Worker) waitBeat(ctx context.Context, gen uint64) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		w.mu.Lock()
		built, sentBefore := w.builtGen, w.builtSent
		w.mu.Unlock()
		if built >= gen && w.publisher().Stats().Sent > sentBefore {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("last beat not sent: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// WaitSent waits, within ctx, until at least n beats have been handed to the
// connection, and returns ctx's error if they were not.
func (w *Worker) WaitSent(ctx context.Context, n uint64) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for w.Stats().Sent < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d beats not sent: %w", n, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Stop stops probing, sets the status to stopped and sends the goodbye
// beat. It is safe before Start (it then sends nothing) and twice.
func (w *Worker) Stop(ctx context.Context) error {
	w.life.Lock()
	started := w.started && !w.stopped
	w.stopped = true
	w.life.Unlock()
	if w.prober != nil {
		w.prober.Stop()
	}
	if !started {
		return nil
	}
	w.mu.Lock()
	w.state.Status = wire.StatusStopped
	w.state.SlotsBusy = 0
	w.mu.Unlock()
	return w.publisher().Stop(ctx)
}

// Abandon stops beating without a goodbye, as a crash would.
func (w *Worker) Abandon() {
	w.life.Lock()
	w.stopped = true
	w.life.Unlock()
	if w.prober != nil {
		w.prober.Stop()
	}
	w.publisher().Abandon()
}
