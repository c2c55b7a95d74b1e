package cli

import (
	"context"
	"log/slog"
	"time"

	"github.com/rbee/heartbeat/gpu"
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

// statsSource samples the machine's CPU, RAM, host temperature and GPUs off
// the publishing path: a hoststats.Sampler collects on the heartbeat cadence
// through gopsutil and NVML, and Fill copies its latest sample into a beat.
type statsSource struct {
	gpus    *gpu.Sampler
	sampler *hoststats.Sampler
	log     *slog.Logger
}

// startStats initialises NVML (once; without it the beats carry gpus: [])
// and starts sampling every interval until ctx ends or Stop. It waits for
// the first sample at most one collection timeout, so the first beat
// normally carries real figures; a slower first collection leaves the
// early beats marked stale.
func startStats(ctx context.Context, interval time.Duration, log *slog.Logger) (*statsSource, error) {
	g := gpu.New(log)
	cfg := statsConfig(interval, log)
	smp, err := hoststats.NewSampler(cfg, hoststats.NewCollector(g, log).Collect)
	if err == nil {
		err = smp.Start(ctx)
	}
	if err != nil {
		_ = g.Close()
		return nil, err
	}
	s := &statsSource{gpus: g, sampler: smp, log: log}
	t := time.NewTimer(cfg.Timeout)
	defer t.Stop()
	select {
	case <-smp.Ready():
	case <-t.C:
		log.Warn("first stats sample not ready, beating with stale stats until it is", "timeout", cfg.Timeout)
	case <-ctx.Done():
	}
	return s, nil
}

// Fill copies the latest sample into h; it never waits for a collection.
func (s *statsSource) Fill(h *wire.Hive) { s.sampler.Fill(h) }

// Stop stops sampling and then shuts NVML down. A collection stuck in the
// driver is not waited for; NVML is shut down when it returns. Stop is safe
// to call more than once (both Stop and Close are).
func (s *statsSource) Stop() {
	s.sampler.Stop()
	if err := s.gpus.Close(); err != nil {
		s.log.Warn("nvml shutdown failed", "err", err)
	}
}
