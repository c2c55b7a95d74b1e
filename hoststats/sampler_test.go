package hoststats

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/rbee/heartbeat/gpu"
	"github.com/rbee/heartbeat/wire"
)

// script is a CollectFunc whose behaviour per call is set by the test.
type script struct {
	mu    sync.Mutex
	calls int
	step  func(ctx context.Context, call int) (Sample, error)
}

func (s *script) collect(ctx context.Context) (Sample, error) {
	s.mu.Lock()
	s.calls++
	call := s.calls
	s.mu.Unlock()
	return s.step(ctx, call)
}

func (s *script) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// cpuSample is a sample told apart by its CPU figure.
func cpuSample(pct float64) Sample {
	return Sample{CPUPercent: pct, RAMTotalBytes: 1 << 30, GPUs: []wire.GPU{}, Health: wire.Healthy, TakenAt: time.Now()}
}

func newTestSampler(t *testing.T, cfg Config, collect CollectFunc) (*Sampler, *logRecorder) {
	t.Helper()
	rec := &logRecorder{}
	cfg.Logger = slog.New(rec)
	s, err := NewSampler(cfg, collect)
	if err != nil {
		t.Fatalf("NewSampler: %v", err)
	}
	t.Cleanup(s.Stop)
	return s, rec
}

func (s *Sampler) isInFlight() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

func (s *Sampler) skippedTicks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipped
}

// slow is a Config whose ticker never fires during a test: collections
// happen at Start and where the test calls launch, and a sample never
// turns stale by age.
var slow = Config{Interval: time.Hour, Timeout: time.Millisecond}

func TestSamplerFirstSample(t *testing.T) {
	sc := &script{step: func(context.Context, int) (Sample, error) { return cpuSample(11), nil }}
	s, _ := newTestSampler(t, Config{Interval: time.Hour, Timeout: time.Hour}, sc.collect)

	smp, f := s.Latest()
	if !f.Empty || !f.Stale || smp.GPUs == nil {
		t.Errorf("before Start: freshness %+v, GPUs %v; want empty, stale, non-nil GPUs", f, smp.GPUs)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := s.Start(context.Background()); !errors.Is(err, ErrAlreadyStarted) {
		t.Errorf("second Start: err = %v, want ErrAlreadyStarted", err)
	}
	receive(t, s.Ready(), "the first sample")
	smp, f = s.Latest()
	if f.Empty || f.Stale || smp.CPUPercent != 11 {
		t.Errorf("after first collection: cpu %v, freshness %+v; want 11, fresh", smp.CPUPercent, f)
	}
}

// TestSamplerHungCollection checks that a collection hung past its timeout
// leaves Latest answering at once with the previous sample marked stale,
// that no second collection starts behind it, and that a late result is
// taken when it finally comes.
func TestSamplerHungCollection(t *testing.T) {
	release := make(chan struct{})
	sc := &script{step: func(_ context.Context, call int) (Sample, error) {
		switch call {
		case 1:
			return cpuSample(11), nil
		case 2:
			<-release // hangs, ignoring its context
			return cpuSample(33), nil
		default:
			return cpuSample(44), nil
		}
	}}
	s, rec := newTestSampler(t, slow, sc.collect)
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	receive(t, s.Ready(), "the first sample")
	eventually(t, "the first collection to finish", func() bool { return !s.isInFlight() })

	s.launch(ctx) // a tick: this collection hangs
	eventually(t, "the hung collection to be reported stale", func() bool {
		_, f := s.Latest()
		return f.Stale
	})
	smp, f := s.Latest()
	if smp.CPUPercent != 11 || f.Empty || f.Age <= 0 {
		t.Errorf("while hung: cpu %v, freshness %+v; want the previous sample (11) with its age", smp.CPUPercent, f)
	}

	for range 3 {
		s.launch(ctx) // ticks while hung
	}
	if n := sc.count(); n != 2 {
		t.Errorf("%d collections started, want 2: none may start while one hangs", n)
	}
	if n := s.skippedTicks(); n != 3 {
		t.Errorf("%d ticks skipped, want 3", n)
	}
	if n := rec.count(slog.LevelWarn); n != 1 {
		t.Errorf("logged %q, want one warning for the hung collection", rec.messages())
	}

	close(release)
	eventually(t, "the late result to be taken", func() bool {
		smp, f := s.Latest()
		return smp.CPUPercent == 33 && !f.Stale
	})
	s.launch(ctx)
	eventually(t, "collections to resume", func() bool {
		smp, _ := s.Latest()
		return smp.CPUPercent == 44
	})
}

// TestSamplerTickerSkipsWhileHung drives the real ticker: while a collection
// hangs, ticks pass without starting another.
func TestSamplerTickerSkipsWhileHung(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	sc := &script{step: func(_ context.Context, call int) (Sample, error) {
		if call == 1 {
			return cpuSample(11), nil
		}
		<-release
		return cpuSample(22), nil
	}}
	s, _ := newTestSampler(t, Config{Interval: time.Millisecond, Timeout: time.Millisecond}, sc.collect)
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	eventually(t, "the second collection to start", func() bool { return sc.count() == 2 })
	base := s.skippedTicks()
	eventually(t, "three ticks skipped behind the hung collection", func() bool { return s.skippedTicks() >= base+3 })
	if n := sc.count(); n != 2 {
		t.Errorf("%d collections started, want 2", n)
	}
	smp, f := s.Latest()
	if smp.CPUPercent != 11 || !f.Stale {
		t.Errorf("cpu %v, freshness %+v; want the first sample (11), stale", smp.CPUPercent, f)
	}
}

func TestSamplerStopWhileHung(t *testing.T) {
	release := make(chan struct{})
	sc := &script{step: func(context.Context, int) (Sample, error) {
		<-release
		return cpuSample(11), nil
	}}
	s, _ := newTestSampler(t, slow, sc.collect)
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	eventually(t, "the collection to start", func() bool { return sc.count() == 1 })

	stopped := make(chan struct{})
	go func() {
		s.Stop()
		s.Stop()
		close(stopped)
	}()
	receive(t, stopped, "Stop to return while the collection hangs")
	if err := s.Start(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after Stop: err = %v, want ErrStopped", err)
	}
	if _, f := s.Latest(); !f.Empty {
		t.Errorf("freshness %+v, want empty: no collection ever finished", f)
	}

	close(release)
	eventually(t, "the abandoned collection to return", func() bool { return !s.isInFlight() })
	if _, f := s.Latest(); !f.Empty {
		t.Errorf("freshness %+v, want empty: a result after Stop is discarded", f)
	}
}

func TestSamplerStopBeforeStart(t *testing.T) {
	sc := &script{step: func(context.Context, int) (Sample, error) { return cpuSample(1), nil }}
	s, _ := newTestSampler(t, slow, sc.collect)
	s.Stop()
	s.Stop()
	if err := s.Start(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after Stop: err = %v, want ErrStopped", err)
	}
}

func TestSamplerFailedCollection(t *testing.T) {
	sc := &script{step: func(_ context.Context, call int) (Sample, error) {
		if call == 1 {
			return cpuSample(11), nil
		}
		return Sample{}, errors.New("read memory: boom")
	}}
	s, rec := newTestSampler(t, slow, sc.collect)
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	receive(t, s.Ready(), "the first sample")
	eventually(t, "the first collection to finish", func() bool { return !s.isInFlight() })

	for range 3 {
		s.launch(ctx)
		eventually(t, "the failing collection to finish", func() bool { return !s.isInFlight() })
	}
	smp, f := s.Latest()
	if smp.CPUPercent != 11 || !f.Stale || f.Empty {
		t.Errorf("after failures: cpu %v, freshness %+v; want the last good sample (11), stale", smp.CPUPercent, f)
	}
	if n := rec.count(slog.LevelWarn); n != 1 {
		t.Errorf("logged %q, want one warning for three failures", rec.messages())
	}
}

// TestSamplerRealCollector runs the Sampler over the real Collector.
func TestSamplerRealCollector(t *testing.T) {
	g := gpu.New(nil)
	t.Cleanup(func() { _ = g.Close() })
	s, _ := newTestSampler(t, Config{Interval: time.Hour, Timeout: time.Minute}, NewCollector(g, nil).Collect)
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	receive(t, s.Ready(), "the first sample")
	smp, f := s.Latest()
	if f.Stale || f.Empty {
		t.Errorf("freshness %+v, want fresh", f)
	}
	if smp.CPUPercent < 0 || smp.CPUPercent > 100 || smp.RAMTotalBytes == 0 || smp.GPUs == nil {
		t.Errorf("sample %+v: want CPU 0–100, RAM total > 0, non-nil GPUs", smp)
	}
	s.Stop()
}

func TestFill(t *testing.T) {
	temp := 61.5
	degraded := cpuSample(42)
	degraded.RAMUsedBytes = 1 << 29
	degraded.HostTemperatureC = &temp
	degraded.GPUs = []wire.GPU{{Index: 0, Health: wire.Degraded, HealthReason: "gpu is lost"}}
	degraded.Health, degraded.HealthReason = wire.Degraded, "gpu 0: gpu is lost"

	tests := []struct {
		name       string
		sample     *Sample // nil: no collection yet
		beat       wire.Meta
		wantHealth wire.Health
		wantReason string
		wantStale  bool
	}{
		{name: "no sample yet", beat: wire.Meta{Health: wire.Healthy}, wantHealth: wire.Healthy, wantStale: true},
		{
			name: "degraded sample", sample: &degraded, beat: wire.Meta{Health: wire.Healthy},
			wantHealth: wire.Degraded, wantReason: "gpu 0: gpu is lost",
		},
		{
			name: "adds to the hive's own reason", sample: &degraded,
			beat:       wire.Meta{Health: wire.Degraded, HealthReason: "worker w1 silent"},
			wantHealth: wire.Degraded, wantReason: "worker w1 silent; gpu 0: gpu is lost",
		},
		{
			name: "never softens unhealthy", sample: &degraded,
			beat:       wire.Meta{Health: wire.Unhealthy, HealthReason: "disk full"},
			wantHealth: wire.Unhealthy, wantReason: "disk full",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := &script{step: func(context.Context, int) (Sample, error) { return *tt.sample, nil }}
			s, _ := newTestSampler(t, slow, sc.collect)
			if tt.sample != nil {
				if err := s.Start(context.Background()); err != nil {
					t.Fatalf("Start: %v", err)
				}
				receive(t, s.Ready(), "the first sample")
			}
			h := &wire.Hive{Meta: tt.beat}
			s.Fill(h)
			if h.Health != tt.wantHealth || h.HealthReason != tt.wantReason || h.StatsStale != tt.wantStale {
				t.Errorf("beat health %s %q stale %v; want %s %q stale %v",
					h.Health, h.HealthReason, h.StatsStale, tt.wantHealth, tt.wantReason, tt.wantStale)
			}
			if h.GPUs == nil {
				t.Error("GPUs is nil, want a non-nil slice")
			}
			if tt.sample == nil {
				return
			}
			if h.CPUPercent != 42 || h.RAMUsedBytes != 1<<29 || h.RAMTotalBytes != 1<<30 ||
				h.HostTemperatureC == nil || *h.HostTemperatureC != temp || len(h.GPUs) != 1 || h.StatsAgeMs < 0 {
				t.Errorf("beat stats not copied: %+v", h)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		change  func(c *Config)
		wantErr bool
	}{
		{name: "default", change: func(*Config) {}},
		{name: "timeout equals interval", change: func(c *Config) { c.Timeout = c.Interval }},
		{name: "zero interval", change: func(c *Config) { c.Interval = 0 }, wantErr: true},
		{name: "negative interval", change: func(c *Config) { c.Interval = -time.Second }, wantErr: true},
		{name: "zero timeout", change: func(c *Config) { c.Timeout = 0 }, wantErr: true},
		{name: "negative timeout", change: func(c *Config) { c.Timeout = -time.Second }, wantErr: true},
		{name: "timeout over interval", change: func(c *Config) { c.Timeout = c.Interval + 1 }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.change(&c)
			err := c.Validate()
			if tt.wantErr != (err != nil) || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
				t.Errorf("Validate() = %v, want error %v wrapping ErrInvalidConfig", err, tt.wantErr)
			}
			_, err = NewSampler(c, func(context.Context) (Sample, error) { return Sample{}, nil })
			if tt.wantErr != (err != nil) || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
				t.Errorf("NewSampler() = %v, want error %v wrapping ErrInvalidConfig", err, tt.wantErr)
			}
		})
	}
	if _, err := NewSampler(DefaultConfig(), nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("NewSampler(nil collect) = %v, want ErrInvalidConfig", err)
	}
}
