// Package hive is the heartbeat side of a machine's agent: it publishes the
// machine's stats (through an injected source) and its own view of the
// workers it hosts, which it learns by subscribing to their heartbeats — the
// two-level chain. A worker's goodbye removes it from the view at once; a
// worker silent for Missed of its own intervals is dropped. With a
// ProcessesFunc, each worker in the view carries the GPU memory its engine
// process holds (by the pid the worker reports). A view larger than a beat
// may carry is sent as its first workers by ID and the count of the rest
// (workers_omitted, wire.TrimWorkers), so the beat is never refused for it.
package hive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
	"golang.org/x/time/rate"
)

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New.
var ErrInvalidConfig = errors.New("invalid hive config")

// StatsFunc fills a hive beat's machine stats (CPU, RAM, GPUs, temperature,
// staleness, health) just before it is sent. It is called from the
// publisher's goroutine and must return promptly: sample elsewhere and copy
// the last sample here.
type StatsFunc func(h *wire.Hive)

// ProcessVRAM is the GPU memory one process holds over all GPUs.
type ProcessVRAM struct {
	// UsedBytes is nil when the driver does not say how much.
	UsedBytes *uint64
	// GPUUUIDs are the GPUs the process holds memory on.
	GPUUUIDs []string
}

// ProcessesFunc returns the GPU memory held per process ID, from the latest
// sample; nil when unknown. It is called once per hive beat, from the
// publisher's goroutine, and must return promptly.
type ProcessesFunc func() map[int]ProcessVRAM

// Config configures a Hive.
type Config struct {
	Prefix   string
	HiveID   string
	Interval time.Duration
	Jitter   float64
	// Missed drops a worker from the view after this many of its own
	// intervals (its beats' interval_ms) without a beat, as the queen does.
	Missed int
	// WorkerTTL, when set, drops every worker after this long instead: one
	// fixed TTL for all, for tests and old set-ups. Zero uses Missed.
	WorkerTTL time.Duration
	Version   string
	Hostname  string // os.Hostname() when empty
	// Stats fills the machine stats; nil sends empty stats with gpus: [].
	Stats StatsFunc
	// Processes gives each worker of the view its GPU memory; nil leaves it out.
	Processes  ProcessesFunc
	InstanceID string
	Logger     *slog.Logger
}

// DefaultConfig returns a Config with the contract's defaults: 30 s interval,
// ±10 % jitter, a worker dropped after 3 of its own intervals of silence.
func DefaultConfig(hiveID string) Config {
	return Config{Prefix: subjects.DefaultPrefix, HiveID: hiveID, Interval: 30 * time.Second,
		Jitter: 0.10, Missed: 3}
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c Config) Validate() error {
	if _, err := subjects.New(c.Prefix); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := subjects.ValidateID("hive id", c.HiveID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.WorkerTTL < 0 {
		return fmt.Errorf("%w: worker TTL %s is negative", ErrInvalidConfig, c.WorkerTTL)
	}
	if c.WorkerTTL == 0 && (c.Missed < 1 || c.Missed > 1000) {
		return fmt.Errorf("%w: missed %d: want 1 to 1000", ErrInvalidConfig, c.Missed)
	}
	return nil
}

type seen struct {
	view     wire.HiveWorker
	instance string
	seq      uint64
	at       time.Time
	ttl      time.Duration // how long the worker may stay silent
}

// Hive publishes one hive's heartbeats. Its methods may be called concurrently.
type Hive struct {
	nc     *nats.Conn
	cfg    Config
	scheme subjects.Scheme
	log    *slog.Logger
	pub    *publisher.Publisher[*wire.Hive]
	sub    *nats.Subscription

	mu      sync.Mutex
	workers map[string]*seen
	now     func() time.Time
	omitLog rate.Sometimes // the warning that the view is trimmed, at most every 30 s
}

// New returns a Hive. It returns an error wrapping ErrInvalidConfig for a bad Config.
func New(nc *nats.Conn, cfg Config) (*Hive, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s, _ := subjects.New(cfg.Prefix)
	h := &Hive{nc: nc, cfg: cfg, scheme: s, log: log.With("component", "hive", "hive", cfg.HiveID),
		workers: map[string]*seen{}, now: time.Now, omitLog: rate.Sometimes{Interval: 30 * time.Second}}
	pc := publisher.DefaultConfig(s.Hive(cfg.HiveID), wire.SchemaHive)
	pc.Interval, pc.Jitter, pc.InstanceID, pc.Logger = cfg.Interval, cfg.Jitter, cfg.InstanceID, cfg.Logger
	var err error
	if h.pub, err = publisher.New(nc, pc, h.snapshot); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return h, nil
}

// InstanceID returns this start's instance ID.
func (h *Hive) InstanceID() string { return h.pub.InstanceID() }

// Stats returns the publisher's counts of beats sent and failed.
func (h *Hive) Stats() publisher.Stats { return h.pub.Stats() }

// Start subscribes to the hive's workers and begins beating.
func (h *Hive) Start(ctx context.Context) error {
	var err error
	h.sub, err = subscriber.Subscribe(h.nc, h.scheme, h.scheme.HiveWorkers(h.cfg.HiveID), "", subscriber.Handler{
		Beat: h.onWorker,
		Reject: func(r *subscriber.RejectError) {
			h.log.Debug("worker beat rejected", "reason", r.Reason, "subject", r.Subject, "err", r.Err)
		},
	})
	if err != nil {
		return fmt.Errorf("subscribe to workers: %w", err)
	}
	if err := natsconn.Flush(ctx, h.nc); err != nil {
		return fmt.Errorf("flush subscription: %w", err)
	}
	return h.pub.Start(ctx)
}

// onWorker updates the view from one worker beat; a new worker, a changed
// status or health, and a goodbye publish a hive beat at once.
func (h *Hive) onWorker(hb *subscriber.Heartbeat) {
	w := hb.Worker
	h.mu.Lock()
	s := h.workers[w.WorkerID]
	if s != nil && s.instance == w.InstanceID && w.Seq <= s.seq {
		h.mu.Unlock()
		return // replayed or reordered
	}
	changed := s == nil || s.view.Status != w.Status || s.view.Health != w.Health
	if hb.Goodbye {
		delete(h.workers, w.WorkerID)
		changed = s != nil
	} else {
		now := h.now()
		h.workers[w.WorkerID] = &seen{
			view: wire.HiveWorker{WorkerID: w.WorkerID, Status: w.Status, Health: w.Health,
				ModelID: w.ModelID, Device: w.Device, LastSeenMs: now.UnixMilli(), PID: w.PID},
			instance: w.InstanceID, seq: w.Seq, at: now, ttl: h.ttl(w.IntervalMs),
		}
	}
	h.mu.Unlock()
	if changed {
		h.pub.Trigger()
	}
}

// ttl returns how long a worker beating every intervalMs may stay silent.
func (h *Hive) ttl(intervalMs int64) time.Duration {
	if h.cfg.WorkerTTL > 0 {
		return h.cfg.WorkerTTL
	}
	return time.Duration(h.cfg.Missed) * time.Duration(intervalMs) * time.Millisecond
}

// Workers returns the hive's current view of its workers, sorted by ID,
// dropping those silent for longer than their TTL (Missed × their own
// interval). With a ProcessesFunc, a worker whose pid holds GPU memory
// carries vram_used_bytes and gpu_uuids.
func (h *Hive) Workers() []wire.HiveWorker {
	var procs map[int]ProcessVRAM
	if h.cfg.Processes != nil {
		procs = h.cfg.Processes()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	out := make([]wire.HiveWorker, 0, len(h.workers))
	for id, s := range h.workers {
		if silent := now.Sub(s.at); silent > s.ttl {
			delete(h.workers, id)
			h.log.Info("worker dropped from view", "worker", id, "silent_for", silent.Round(time.Millisecond), "ttl", s.ttl)
			continue
		}
		v := s.view
		if p, ok := procs[v.PID]; ok && v.PID > 0 {
			v.VRAMUsedBytes = p.UsedBytes
			v.GPUUUIDs = slices.Clone(p.GPUUUIDs)
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].WorkerID < out[j].WorkerID })
	return out
}

// Beat publishes a hive beat now instead of at the next tick, as a GPU
// event needs. It never blocks; beats asked for together are merged.
func (h *Hive) Beat() { h.pub.Trigger() }

func (h *Hive) snapshot() *wire.Hive {
	b := &wire.Hive{
		Meta:     wire.Meta{Health: wire.Healthy},
		HiveID:   h.cfg.HiveID,
		Hostname: h.cfg.Hostname,
		Version:  h.cfg.Version,
		GPUs:     []wire.GPU{},
	}
	if h.cfg.Stats != nil {
		h.cfg.Stats(b)
	}
	if b.GPUs == nil {
		b.GPUs = []wire.GPU{}
	}
	b.Workers = h.Workers()
	total := len(b.Workers)
	if omitted := wire.TrimWorkers(b); omitted > 0 {
		h.omitLog.Do(func() {
			h.log.Warn("view larger than a beat carries: sending the first workers by id and the count of the rest",
				"workers", total, "sent", total-omitted, "workers_omitted", omitted)
		})
	}
	return b
}

// Stop unsubscribes and sends the goodbye beat.
func (h *Hive) Stop(ctx context.Context) error {
	if h.sub != nil {
		_ = h.sub.Unsubscribe()
	}
	return h.pub.Stop(ctx)
}

// Abandon stops beating without a goodbye, as a crash would.
func (h *Hive) Abandon() {
	if h.sub != nil {
		_ = h.sub.Unsubscribe()
	}
	h.pub.Abandon()
}
