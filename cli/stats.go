package cli

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/rbee/heartbeat/gpu"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/hoststats"
	"github.com/rbee/heartbeat/wire"
)

const (
	// minStatsInterval is the shortest time between two stats collections.
	// A collection measures CPU use over at least 200 ms, so sub-second
	// heartbeats (demos, tests) reuse a sample for a few beats instead of
	// collecting back to back.
	minStatsInterval = time.Second
	// maxStatsTimeout bounds one collection at the default 30 s interval.
	maxStatsTimeout = 5 * time.Second
)

// statsConfig returns the sampler settings for a hive beating every
// interval: one collection per beat (at least minStatsInterval apart), each
// allowed half the sampling interval, at most maxStatsTimeout.
func statsConfig(interval time.Duration, log *slog.Logger) hoststats.Config {
	cfg := hoststats.DefaultConfig()
	cfg.Interval = max(interval, minStatsInterval)
	cfg.Timeout = min(cfg.Interval/2, maxStatsTimeout)
	cfg.Logger = log
	return cfg
}

// statsSource samples the machine's CPU, RAM, host temperature, GPUs and
// GPU processes off the publishing path: a hoststats.Sampler collects on
// the heartbeat cadence through gopsutil and NVML, and Fill copies its
// latest sample into a beat. GPU events (Xid errors) arrive between samples
// through gpu.Events; each one asks for a hive beat at once.
type statsSource struct {
	gpus    *gpu.Sampler
	events  *gpu.Events
	sampler *hoststats.Sampler
	log     *slog.Logger

	mu      sync.Mutex
	onEvent func() // set once the hive exists
}

// startStats initialises NVML (once; without it the beats carry gpus: [])
// and starts sampling every interval until ctx ends or Stop, and waiting
// for GPU events. It waits for the first sample at most one collection
// timeout, so the first beat normally carries real figures; a slower first
// collection leaves the early beats marked stale.
func startStats(ctx context.Context, interval time.Duration, log *slog.Logger) (*statsSource, error) {
	s := &statsSource{gpus: gpu.New(log), log: log}
	s.events = gpu.NewEvents(log, func(gpu.Event) { s.eventBeat() })
	return s.start(ctx, interval)
}

func (s *statsSource) start(ctx context.Context, interval time.Duration) (*statsSource, error) {
	cfg := statsConfig(interval, s.log)
	smp, err := hoststats.NewSampler(cfg, hoststats.NewCollector(s.gpus, s.log).Collect)
	if err == nil {
		err = smp.Start(ctx)
	}
	if err != nil {
		_ = s.gpus.Close()
		return nil, err
	}
	s.sampler = smp
	if err := s.events.Start(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	t := time.NewTimer(cfg.Timeout)
	defer t.Stop()
	select {
	case <-smp.Ready():
	case <-t.C:
		s.log.Warn("first stats sample not ready, beating with stale stats until it is", "timeout", cfg.Timeout)
	case <-ctx.Done():
	}
	return s, nil
}

// OnEvent sets what a GPU event does: the hive's immediate beat.
func (s *statsSource) OnEvent(f func()) {
	s.mu.Lock()
	s.onEvent = f
	s.mu.Unlock()
}

func (s *statsSource) eventBeat() {
	s.mu.Lock()
	f := s.onEvent
	s.mu.Unlock()
	if f != nil {
		f()
	}
}

// Fill copies the latest sample into h, then the latest GPU events (xid,
// recovery action, and the health NVIDIA's Xid catalogue gives them); it
// never waits for a collection.
func (s *statsSource) Fill(h *wire.Hive) {
	s.sampler.Fill(h)
	health, reason := s.events.Apply(h.GPUs)
	if health == wire.Healthy {
		return
	}
	if h.Health != wire.Unhealthy {
		h.Health = health
	}
	if h.HealthReason == "" {
		h.HealthReason = reason
	} else {
		h.HealthReason += "; " + reason
	}
}

// Processes returns the GPU memory per process from the latest sample, for
// the hive's view of its workers.
func (s *statsSource) Processes() map[int]hive.ProcessVRAM {
	smp, _ := s.sampler.Latest()
	if len(smp.Processes) == 0 {
		return nil
	}
	out := map[int]hive.ProcessVRAM{}
	for pid, u := range gpu.ByPID(smp.Processes) {
		out[pid] = hive.ProcessVRAM{UsedBytes: u.UsedBytes, GPUUUIDs: u.GPUUUIDs}
	}
	return out
}

// Stop stops the events and sampling and then shuts NVML down. A
// collection stuck in the driver is not waited for; NVML is shut down when
// it returns. Stop is safe to call more than once (every part's Stop is).
func (s *statsSource) Stop() {
	s.events.Stop()
	if s.sampler != nil {
		s.sampler.Stop()
	}
	if err := s.gpus.Close(); err != nil {
		s.log.Warn("nvml shutdown failed", "err", err)
	}
}
