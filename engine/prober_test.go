package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/enginetest"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/wire"
)

// checkFor polls f until it returns nil, failing with its last error at the
// deadline (testutil.CheckFor).
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, 20*time.Millisecond, f)
}

// recorder keeps every State a Prober reports.
type recorder struct {
	mu     sync.Mutex
	states []State
}

func (r *recorder) add(s State) { r.mu.Lock(); r.states = append(r.states, s); r.mu.Unlock() }

func (r *recorder) any(f func(State) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.states {
		if f(s) {
			return true
		}
	}
	return false
}

func spec(t *testing.T, k Kind) Spec {
	t.Helper()
	s, err := Preset(k)
	if err != nil {
		t.Fatal(err)
	}
	if k == Generic {
		s.Running, s.Waiting, s.Tokens = "app_running", "app_waiting", "app_tokens_total"
	}
	return s
}

func startProber(t *testing.T, s Spec, url string, timeout time.Duration) (*Prober, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg := DefaultConfig(s, url)
	cfg.Interval, cfg.Timeout, cfg.OnState = timeout, timeout, rec.add
	p, err := NewProber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p, rec
}

func describe(s State) string {
	f := func(p *int) string {
		if p == nil {
			return "nil"
		}
		return fmt.Sprint(*p)
	}
	tok := "nil"
	if s.Metrics.Tokens != nil {
		tok = fmt.Sprint(*s.Metrics.Tokens)
	}
	return fmt.Sprintf("status=%s health=%s reason=%q running=%s waiting=%s tokens=%s model=%q version=%q stale=%v probes=%d",
		s.Status, s.Health, s.Reason, f(s.Metrics.Running), f(s.Metrics.Waiting), tok, s.Metrics.Model, s.Metrics.Version, s.Stale, s.Probes)
}

// want returns an error naming the state unless ok holds for it.
func want(p *Prober, what string, ok func(State) bool) func() error {
	return func() error {
		if s := p.Latest(); !ok(s) {
			return fmt.Errorf("want %s, have %s", what, describe(s))
		}
		return nil
	}
}

func is(p *int, n int) bool { return p != nil && *p == n }

func TestPresetsReadEachEngine(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			e := enginetest.Start(t, string(k))
			if k == LlamaCPP {
				e.SetLoading(true)
			}
			p, rec := startProber(t, spec(t, k), e.URL, 200*time.Millisecond)
			if k == LlamaCPP {
				checkFor(t, 5*time.Second, want(p, "starting while the model loads", func(s State) bool {
					return s.Probes > 0 && s.Status == wire.StatusStarting && s.Health == wire.Healthy
				}))
				e.SetLoading(false)
			}
			e.Set(0, 0, 100)
			checkFor(t, 5*time.Second, want(p, "ready, healthy, 100 tokens", func(s State) bool {
				return s.Status == wire.StatusReady && s.Health == wire.Healthy && !s.Stale &&
					s.Metrics.Tokens != nil && *s.Metrics.Tokens == 100 && is(s.Metrics.Running, 0) && is(s.Metrics.Waiting, 0)
			}))
			if s := p.Latest(); k != Generic && (s.Metrics.Version != enginetest.Version || s.Metrics.Model == "" && k != VLLM) {
				t.Errorf("model and version not read: %s", describe(s))
			}
			if s := p.Latest(); k == VLLM && s.Metrics.Model != enginetest.Model {
				t.Errorf("vLLM model from the model_name label: %s", describe(s))
			}
			e.Set(2, 3, 250)
			checkFor(t, 5*time.Second, want(p, "busy with 2 running, 3 waiting, 250 tokens", func(s State) bool {
				return s.Status == wire.StatusBusy && is(s.Metrics.Running, 2) && is(s.Metrics.Waiting, 3) &&
					s.Metrics.Tokens != nil && *s.Metrics.Tokens == 250
			}))
			e.Set(2, 3, 7) // the counter went back: the engine restarted
			checkFor(t, 5*time.Second, func() error {
				if !rec.any(func(s State) bool { return s.Restarted && s.Metrics.Tokens != nil && *s.Metrics.Tokens == 7 }) {
					return fmt.Errorf("no state marked restarted; latest %s", describe(p.Latest()))
				}
				return nil
			})
			if p.Latest().Restarted {
				t.Error("Latest reports Restarted; only the probe that saw the reset does")
			}
		})
	}
}

func TestProbeHangingPastTimeoutKeepsLastGoodStale(t *testing.T) {
	e := enginetest.Start(t, "vllm")
	e.Set(1, 0, 40)
	p, _ := startProber(t, spec(t, VLLM), e.URL, 50*time.Millisecond)
	checkFor(t, 5*time.Second, want(p, "busy", func(s State) bool { return s.Status == wire.StatusBusy && !s.Stale }))
	e.SetHang(true)
	checkFor(t, 5*time.Second, want(p, "unhealthy, stale, last good metrics kept", func(s State) bool {
		return s.Health == wire.Unhealthy && s.Stale && strings.Contains(s.Reason, "no answer in time") &&
			s.Status == wire.StatusBusy && s.Metrics.Tokens != nil && *s.Metrics.Tokens == 40
	}))
	e.SetHang(false)
	checkFor(t, 5*time.Second, want(p, "healthy again", func(s State) bool { return s.Health == wire.Healthy && !s.Stale }))
}

func TestFailingProbeStopsAfterGrace(t *testing.T) {
	e := enginetest.Start(t, "tgi")
	s := spec(t, TGI)
	s.Grace = 100 * time.Millisecond
	p, _ := startProber(t, s, e.URL, 200*time.Millisecond)
	checkFor(t, 5*time.Second, want(p, "ready", func(s State) bool { return s.Status == wire.StatusReady }))
	e.SetFail(500)
	checkFor(t, 5*time.Second, want(p, "unhealthy with HTTP 500", func(s State) bool {
		return s.Health == wire.Unhealthy && strings.Contains(s.Reason, "HTTP 500")
	}))
	checkFor(t, 5*time.Second, want(p, "stopped past the grace", func(s State) bool {
		return s.Status == wire.StatusStopped && s.Health == wire.Unhealthy && strings.Contains(s.Reason, "grace")
	}))
	e.SetFail(0)
	checkFor(t, 5*time.Second, want(p, "ready once it answers", func(s State) bool { return s.Status == wire.StatusReady }))
}

func TestEngineNeverUpStartsThenStops(t *testing.T) {
	e := enginetest.Start(t, "sglang")
	e.SetFail(503)
	s := spec(t, SGLang)
	s.StartGrace = 150 * time.Millisecond
	p, _ := startProber(t, s, e.URL, 200*time.Millisecond)
	checkFor(t, 5*time.Second, want(p, "starting, unhealthy", func(s State) bool {
		return s.Probes > 0 && s.Status == wire.StatusStarting && s.Health == wire.Unhealthy
	}))
	checkFor(t, 5*time.Second, want(p, "stopped past the start grace", func(s State) bool {
		return s.Status == wire.StatusStopped && strings.Contains(s.Reason, "start grace")
	}))
}

func TestMetricsFailingIsDegraded(t *testing.T) {
	e := enginetest.Start(t, "llamacpp")
	e.SetMetricsFail(true)
	p, _ := startProber(t, spec(t, LlamaCPP), e.URL, 200*time.Millisecond)
	checkFor(t, 5*time.Second, want(p, "degraded: metrics HTTP 500", func(s State) bool {
		return s.Status == wire.StatusReady && s.Health == wire.Degraded && strings.Contains(s.Reason, "metrics: HTTP 500") && s.Stale
	}))
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig(spec(t, VLLM), "http://127.0.0.1:8000")
	tests := []struct {
		name  string
		spoil func(c *Config)
		want  string
	}{
		{"good", func(*Config) {}, ""},
		{"no scheme", func(c *Config) { c.URL = "127.0.0.1:8000" }, "engine url"},
		{"timeout past interval", func(c *Config) { c.Timeout = time.Minute }, "probe timeout"},
		{"relative path", func(c *Config) { c.Spec.HealthPath = "health" }, "must start with /"},
		{"no health path", func(c *Config) { c.Spec.HealthPath = "" }, "health path"},
		{"zero grace", func(c *Config) { c.Spec.Grace = 0 }, "graces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.spoil(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want ErrInvalidConfig with %q", err, tt.want)
			}
		})
	}
	if _, err := Preset("triton"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("unknown preset: %v", err)
	}
}

func TestProberLifecycle(t *testing.T) {
	e := enginetest.Start(t, "vllm")
	cfg := DefaultConfig(spec(t, VLLM), e.URL)
	cfg.Interval, cfg.Timeout = 10*time.Millisecond, 10*time.Millisecond
	p, err := NewProber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.Stop() // before Start
	if err := p.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("Start after Stop: %v", err)
	}

	p, _ = NewProber(cfg)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = p.Start(context.Background()) }()
	go func() { defer wg.Done(); p.Stop() }()
	go func() { defer wg.Done(); _ = p.Latest() }()
	wg.Wait()
	p.Stop()

	p, _ = NewProber(cfg)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	p.Stop()
	p.Stop()
}
