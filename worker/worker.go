// Package worker is the heartbeat side of one inference worker: it publishes
// the worker's state every interval, at once when the state changes, and a
// goodbye when it stops gracefully.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New.
var ErrInvalidConfig = errors.New("invalid worker config")

// Config configures a Worker.
type Config struct {
	Prefix     string
	HiveID     string
	WorkerID   string
	Interval   time.Duration
	Jitter     float64
	ModelID    string
	Device     string
	URL        string
	Version    string
	SlotsTotal int
	// InstanceID is random per start when empty.
	InstanceID string
	Logger     *slog.Logger
}

// DefaultConfig returns a Config for one worker with the contract's defaults
// (30 s interval, ±10 % jitter, one slot).
func DefaultConfig(hiveID, workerID string) Config {
	return Config{Prefix: subjects.DefaultPrefix, HiveID: hiveID, WorkerID: workerID,
		Interval: 30 * time.Second, Jitter: 0.10, Device: "cpu", SlotsTotal: 1}
}

// Validate returns an error wrapping ErrInvalidConfig (and subjects.ErrInvalidID
// for a bad ID) if c cannot work.
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
	if c.SlotsTotal < 0 {
		return fmt.Errorf("%w: slots %d", ErrInvalidConfig, c.SlotsTotal)
	}
	probe := wire.Worker{Meta: wire.Meta{Health: wire.Healthy}, HiveID: c.HiveID, WorkerID: c.WorkerID,
		Status: wire.StatusStarting, ModelID: c.ModelID, Device: c.Device, URL: c.URL, Version: c.Version, SlotsTotal: c.SlotsTotal}
	probe.Stamp("probe", 1, 0, time.Second.Milliseconds())
	if err := probe.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Worker publishes one worker's heartbeats. Its methods may be called concurrently.
type Worker struct {
	pub   *publisher.Publisher[*wire.Worker]
	mu    sync.Mutex
	state wire.Worker
}

// New returns a Worker in status "starting". It returns an error wrapping
// ErrInvalidConfig for a bad Config.
func New(nc *nats.Conn, cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s, _ := subjects.New(cfg.Prefix)
	w := &Worker{state: wire.Worker{
		Meta:     wire.Meta{Health: wire.Healthy},
		HiveID:   cfg.HiveID,
		WorkerID: cfg.WorkerID,
		Status:   wire.StatusStarting,
		ModelID:  cfg.ModelID, Device: cfg.Device, URL: cfg.URL, Version: cfg.Version,
		SlotsTotal: cfg.SlotsTotal,
	}}
	pc := publisher.DefaultConfig(s.Worker(cfg.HiveID, cfg.WorkerID), wire.SchemaWorker)
	pc.Interval, pc.Jitter, pc.InstanceID = cfg.Interval, cfg.Jitter, cfg.InstanceID
	if cfg.Logger != nil {
		pc.Logger = cfg.Logger.With("worker", cfg.WorkerID)
	}
	var err error
	w.pub, err = publisher.New(nc, pc, w.snapshot)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return w, nil
}

func (w *Worker) snapshot() *wire.Worker {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.state
	return &s
}

// InstanceID returns this start's instance ID.
func (w *Worker) InstanceID() string { return w.pub.InstanceID() }

// Stats returns the publisher's counts.
func (w *Worker) Stats() publisher.Stats { return w.pub.Stats() }

// Start begins beating (the first beat at once).
func (w *Worker) Start(ctx context.Context) error { return w.pub.Start(ctx) }

// SetStatus changes the worker's status and health and, if anything changed,
// publishes a beat at once. It returns an error wrapping ErrInvalidConfig for
// an unknown status or health.
func (w *Worker) SetStatus(st wire.Status, h wire.Health, reason string) error {
	if !st.Valid() || !h.Valid() || len(reason) > wire.MaxTextLen {
		return fmt.Errorf("%w: status %q health %q", ErrInvalidConfig, st, h)
	}
	w.mu.Lock()
	changed := w.state.Status != st || w.state.Health != h || w.state.HealthReason != reason
	w.state.Status, w.state.Health, w.state.HealthReason = st, h, reason
	w.mu.Unlock()
	if changed {
		w.pub.Trigger()
	}
	return nil
}

// SetSlotsBusy records how many slots are busy; it goes out with the next beat.
func (w *Worker) SetSlotsBusy(n int) {
	w.mu.Lock()
	w.state.SlotsBusy = max(0, min(n, w.state.SlotsTotal))
	w.mu.Unlock()
}

// Stop sets the status to stopped and sends the goodbye beat.
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	w.state.Status = wire.StatusStopped
	w.state.SlotsBusy = 0
	w.mu.Unlock()
	return w.pub.Stop(ctx)
}

// Abandon stops beating without a goodbye, as a crash would.
func (w *Worker) Abandon() { w.pub.Abandon() }
