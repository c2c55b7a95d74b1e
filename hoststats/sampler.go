package hoststats

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/rbee/heartbeat/wire"
)

// CollectFunc performs one collection; (*Collector).Collect is one. It
// should return when ctx ends, but the Sampler copes with one that does not.
type CollectFunc func(ctx context.Context) (Sample, error)

// Config configures a Sampler.
type Config struct {
	// Interval is the time between collections; use the heartbeat interval
	// so every beat carries a sample at most one interval old.
	Interval time.Duration
	// Timeout bounds one collection. Past it the last good sample is
	// reported stale, and no new collection starts until the late one
	// returns. At most Interval.
	Timeout time.Duration
	// Logger receives collection failures; nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns a Config with a 30 s interval (the heartbeat's) and
// a 5 s collection timeout.
func DefaultConfig() Config {
	return Config{
		Interval: 30 * time.Second,
		Timeout:  5 * time.Second,
	}
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c Config) Validate() error {
	switch {
	case c.Interval <= 0:
		return fmt.Errorf("%w: interval must be positive, got %v", ErrInvalidConfig, c.Interval)
	case c.Timeout <= 0:
		return fmt.Errorf("%w: timeout must be positive, got %v", ErrInvalidConfig, c.Timeout)
	case c.Timeout > c.Interval:
		return fmt.Errorf("%w: timeout %v exceeds interval %v", ErrInvalidConfig, c.Timeout, c.Interval)
	}
	return nil
}

// Freshness says how current the sample returned by Latest is.
type Freshness struct {
	// Stale is true when the sample is not current: there is none yet, the
	// last collection failed, a collection has run past its timeout, or the
	// sample is older than Interval plus Timeout.
	Stale bool
	// Age is how long ago the sample was taken; zero when there is none.
	Age time.Duration
	// Empty is true until the first collection succeeds; the Sample is then
	// zero except for an empty, non-nil GPUs.
	Empty bool
}

// Sampler collects the machine's statistics every Interval in its own
// goroutine and keeps the last good sample. Its methods may be called
// concurrently.
type Sampler struct {
	cfg     Config
	collect CollectFunc
	logger  *slog.Logger
	ready   chan struct{}

	mu        sync.Mutex
	latest    Sample
	have      bool
	failed    bool      // the last finished collection failed
	inFlight  bool      // a collection is running
	since     time.Time // when the running collection started
	hungNoted bool      // the running collection's overrun was logged
	skipped   int       // ticks skipped because a collection was running
	started   bool
	stopped   bool
	cancel    context.CancelFunc
	wg        sync.WaitGroup // the run loop
}

// NewSampler returns a Sampler that calls collect. It returns an error
// wrapping ErrInvalidConfig if cfg is invalid or collect is nil.
func NewSampler(cfg Config, collect CollectFunc) (*Sampler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if collect == nil {
		return nil, fmt.Errorf("%w: nil collect func", ErrInvalidConfig)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Sampler{
		cfg:     cfg,
		collect: collect,
		logger:  logger.With("component", "hoststats"),
		ready:   make(chan struct{}),
	}, nil
}

// Start begins collecting: the first collection at once, then one every
// Interval, until ctx ends or Stop. It returns ErrAlreadyStarted if called
// twice and ErrStopped after Stop.
func (s *Sampler) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.stopped:
		return ErrStopped
	case s.started:
		return ErrAlreadyStarted
	}
	s.started = true
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Add(1)
	go s.run(ctx)
	return nil
}

// Stop ends collecting and waits for the sampling goroutine. A collection
// that ignores its cancelled context is not waited for; it is the only one
// that can be outstanding, and its result is discarded. Latest keeps
// answering after Stop. Stop is safe to call more than once, and before Start.
func (s *Sampler) Stop() {
	s.mu.Lock()
	s.stopped = true
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.wg.Wait()
}

// Ready returns a channel closed once the first collection has succeeded.
func (s *Sampler) Ready() <-chan struct{} { return s.ready }

// Latest returns the last good sample and how fresh it is, without waiting
// for a collection in progress. Before the first good collection it returns
// an empty sample marked Empty and Stale.
func (s *Sampler) Latest() (Sample, Freshness) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.have {
		return Sample{GPUs: []wire.GPU{}}, Freshness{Stale: true, Empty: true}
	}
	now := time.Now()
	age := now.Sub(s.latest.TakenAt)
	stale := s.failed ||
		(s.inFlight && now.Sub(s.since) > s.cfg.Timeout) ||
		age > s.cfg.Interval+s.cfg.Timeout
	smp := s.latest
	smp.GPUs = slices.Clone(s.latest.GPUs)
	smp.Processes = slices.Clone(s.latest.Processes)
	return smp, Freshness{Stale: stale, Age: age}
}

// Fill copies the latest sample into a hive beat: CPU, RAM, host temperature,
// GPUs, staleness and age. A degraded sample makes the beat degraded with
// the sample's reason; a stale one only sets StatsStale. Fill has the shape
// of hive.StatsFunc and never blocks on a collection.
func (s *Sampler) Fill(h *wire.Hive) {
	smp, f := s.Latest()
	h.CPUPercent = smp.CPUPercent
	h.RAMUsedBytes, h.RAMTotalBytes = smp.RAMUsedBytes, smp.RAMTotalBytes
	h.HostTemperatureC = smp.HostTemperatureC
	h.GPUs = smp.GPUs
	h.StatsStale = f.Stale
	h.StatsAgeMs = f.Age.Milliseconds()
	if smp.Health == wire.Degraded && h.Health != wire.Unhealthy {
		h.Health = wire.Degraded
		if h.HealthReason == "" {
			h.HealthReason = smp.HealthReason
		} else {
			h.HealthReason += "; " + smp.HealthReason
		}
	}
}

func (s *Sampler) run(ctx context.Context) {
	defer s.wg.Done()
	ticker := time.NewTicker(s.cfg.Interval)
	defer ticker.Stop()
	s.launch(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			s.launch(ctx)
		}
	}
}

// launch starts a collection in its own goroutine unless one is still
// running: a hung collection must not pile up others behind it.
func (s *Sampler) launch(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inFlight {
		s.skipped++
		if !s.hungNoted {
			s.hungNoted = true
			s.logger.Warn("stats collection still running, reusing last sample",
				"running_for", time.Since(s.since).Round(time.Millisecond), "timeout", s.cfg.Timeout)
		}
		return
	}
	s.inFlight, s.since, s.hungNoted = true, time.Now(), false
	go s.collectOnce(ctx)
}

// collectOnce runs one collection under Timeout and records its outcome.
func (s *Sampler) collectOnce(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	smp, err := s.collect(cctx)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight = false
	if ctx.Err() != nil {
		return // stopped: nobody is waiting for this result
	}
	if err != nil {
		if !s.failed {
			s.logger.Warn("stats collection failed, reusing last sample", "err", err)
		} else {
			s.logger.Debug("stats collection failed", "err", err)
		}
		s.failed = true
		return
	}
	if s.failed {
		s.logger.Info("stats collection recovered")
	}
	if smp.GPUs == nil {
		smp.GPUs = []wire.GPU{}
	}
	if smp.Health == "" {
		smp.Health = wire.Healthy
	}
	if smp.TakenAt.IsZero() {
		smp.TakenAt = time.Now()
	}
	first := !s.have
	s.latest, s.have, s.failed = smp, true, false
	if first {
		close(s.ready)
	}
}
