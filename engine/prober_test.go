package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
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
		s.Running, s.Waiting, s.Progress = "app_running", "app_waiting", "app_tokens_total"
	}
	return s
}

func startProber(t *testing.T, s Spec, url string, timeout time.Duration) (*Prober, *recorder) {
	t.Helper()
	return startProberWith(t, s, url, timeout, nil)
}

// startProberWith starts a Prober whose Config edit may change.
func startProberWith(t *testing.T, s Spec, url string, timeout time.Duration, edit func(*Config)) (*Prober, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg := DefaultConfig(s, url)
	cfg.Interval, cfg.Timeout, cfg.OnState = timeout, timeout, rec.add
	if edit != nil {
		edit(&cfg)
	}
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
	prog, kv := "nil", "nil"
	if s.Metrics.Progress != nil {
		prog = fmt.Sprint(*s.Metrics.Progress)
	}
	if s.Metrics.KVCachePercent != nil {
		kv = fmt.Sprint(*s.Metrics.KVCachePercent)
	}
	return fmt.Sprintf("status=%s health=%s reason=%q running=%s waiting=%s progress=%s kv=%s sleeping=%v model=%q version=%q stale=%v probes=%d",
		s.Status, s.Health, s.Reason, f(s.Metrics.Running), f(s.Metrics.Waiting), prog, kv, s.Metrics.Sleeping, s.Model, s.Version, s.Stale, s.Probes)
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

func progressIs(s State, n uint64) bool { return s.Metrics.Progress != nil && *s.Metrics.Progress == n }

// logBuffer returns a logger writing text into a buffer, and the buffer.
func logBuffer() (*slog.Logger, *testutil.Buffer) {
	b := &testutil.Buffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

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
			checkFor(t, 5*time.Second, want(p, "ready, healthy, progress 100", func(s State) bool {
				return s.Status == wire.StatusReady && s.Health == wire.Healthy && !s.Stale &&
					progressIs(s, 100) && is(s.Metrics.Running, 0) && is(s.Metrics.Waiting, 0)
			}))
			if k != Generic { // the info endpoint is read beside the first probes, not before them
				checkFor(t, 5*time.Second, want(p, fmt.Sprintf("model %q, version %q", e.Model, e.Version), func(s State) bool {
					return s.Version == e.Version && s.Model == e.Model && s.Model != ""
				}))
			}
			e.Set(2, 3, 250)
			checkFor(t, 5*time.Second, want(p, "busy with 2 running, 3 waiting, progress 250", func(s State) bool {
				return s.Status == wire.StatusBusy && is(s.Metrics.Running, 2) && is(s.Metrics.Waiting, 3) && progressIs(s, 250)
			}))
			e.Set(2, 3, 7) // the counter went back: the engine restarted
			checkFor(t, 5*time.Second, func() error {
				if !rec.any(func(s State) bool { return s.Restarted && progressIs(s, 7) }) {
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

// TestLongGenerationProgressMoves is a request generating for many probes:
// the counter that grows only when a request finishes stays put, and
// progress must still move with every decode step.
func TestLongGenerationProgressMoves(t *testing.T) {
	for _, k := range []Kind{VLLM, LlamaCPP, TGI, SGLang} {
		t.Run(string(k), func(t *testing.T) {
			e := enginetest.Start(t, string(k))
			e.SetFinished(500)
			e.Set(1, 0, 1000)
			p, _ := startProber(t, spec(t, k), e.URL, 100*time.Millisecond)
			checkFor(t, 5*time.Second, want(p, "busy at 1000 steps", func(s State) bool {
				return s.Status == wire.StatusBusy && progressIs(s, 1000)
			}))
			for step := uint64(1100); step <= 1300; step += 100 {
				e.Set(1, 0, step) // decoding; nothing finished
				checkFor(t, 5*time.Second, want(p, fmt.Sprintf("progress %d while the request runs", step), func(s State) bool {
					return progressIs(s, step) && !s.Metrics.PerRequest
				}))
			}
		})
	}
}

// TestPerRequestCounterOnlyIsSaidOnce: an engine build without the per-step
// counter is read through its per-request one, and the prober says once
// that stall detection then needs a long window.
func TestPerRequestCounterOnlyIsSaidOnce(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			fmt.Fprint(w, "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total 42\n# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n")
		}
	}))
	t.Cleanup(srv.Close)
	log, buf := logBuffer()
	p, _ := startProberWith(t, spec(t, LlamaCPP), srv.URL, 50*time.Millisecond, func(c *Config) { c.Logger = log })
	checkFor(t, 5*time.Second, want(p, "progress 42 from the per-request counter, three probes", func(s State) bool {
		return progressIs(s, 42) && s.Metrics.PerRequest && s.Probes >= 3
	}))
	if n := strings.Count(buf.String(), "grows only when a request finishes"); n != 1 {
		t.Fatalf("per-request warning logged %d times, want once; log:\n%s", n, buf.String())
	}
}

// TestEndpointFailureIsolation: each endpoint's failure changes only what
// it feeds.
func TestEndpointFailureIsolation(t *testing.T) {
	t.Run("health", func(t *testing.T) {
		e := enginetest.Start(t, "vllm")
		e.Set(1, 2, 300)
		p, _ := startProber(t, spec(t, VLLM), e.URL, 100*time.Millisecond)
		checkFor(t, 5*time.Second, want(p, "busy", func(s State) bool { return s.Status == wire.StatusBusy && s.Version != "" }))
		e.SetFail(503)
		e.Set(1, 2, 400)
		checkFor(t, 5*time.Second, want(p, "unhealthy, still busy, load figures still read", func(s State) bool {
			return s.Health == wire.Unhealthy && strings.Contains(s.Reason, "health: HTTP 503") &&
				s.Status == wire.StatusBusy && progressIs(s, 400) && !s.Stale && s.Version == e.Version && s.Model == e.Model
		}))
	})
	t.Run("metrics", func(t *testing.T) {
		e := enginetest.Start(t, "llamacpp")
		e.Set(2, 0, 300)
		p, _ := startProber(t, spec(t, LlamaCPP), e.URL, 100*time.Millisecond)
		checkFor(t, 5*time.Second, want(p, "busy", func(s State) bool { return s.Status == wire.StatusBusy && s.Version != "" }))
		e.SetMetricsFail(true)
		checkFor(t, 5*time.Second, want(p, "degraded, stale, last load kept, model and version kept", func(s State) bool {
			return s.Health == wire.Degraded && strings.Contains(s.Reason, "metrics: HTTP 500") && s.Stale &&
				s.Status == wire.StatusBusy && is(s.Metrics.Running, 2) && progressIs(s, 300) &&
				s.Version == e.Version && s.Model == e.Model
		}))
	})
	for _, k := range []Kind{VLLM, LlamaCPP, TGI, SGLang} {
		t.Run("info "+string(k), func(t *testing.T) {
			e := enginetest.Start(t, string(k))
			e.SetPathFail(e.InfoPath(), http.StatusNotFound) // a proxy forwarding only /health and /metrics
			e.Set(3, 1, 900)
			log, buf := logBuffer()
			p, _ := startProberWith(t, spec(t, k), e.URL, 50*time.Millisecond, func(c *Config) { c.Logger = log })
			checkFor(t, 5*time.Second, want(p, "busy, healthy, fresh load, five probes", func(s State) bool {
				return s.Status == wire.StatusBusy && s.Health == wire.Healthy && !s.Stale && is(s.Metrics.Running, 3) &&
					is(s.Metrics.Waiting, 1) && progressIs(s, 900) && s.Version == "" && s.Probes >= 5
			}))
			if n := e.Hits(e.InfoPath()); n != 1 {
				t.Errorf("info asked %d times in %d probes; want once until the retry time", n, p.Latest().Probes)
			}
			if n := strings.Count(buf.String(), "engine info unavailable"); n != 1 {
				t.Errorf("info failure logged %d times, want once; log:\n%s", n, buf.String())
			}
		})
	}
	t.Run("info retried", func(t *testing.T) {
		e := enginetest.Start(t, "tgi")
		e.SetPathFail("/info", http.StatusNotFound)
		p, _ := startProberWith(t, spec(t, TGI), e.URL, 50*time.Millisecond, func(c *Config) { c.InfoRetry = 200 * time.Millisecond })
		checkFor(t, 5*time.Second, want(p, "ready without a version", func(s State) bool { return s.Status == wire.StatusReady && s.Version == "" }))
		e.SetPathFail("/info", 0)
		checkFor(t, 5*time.Second, want(p, "version read once the info endpoint answers", func(s State) bool {
			return s.Version == e.Version && s.Model == e.Model && s.Health == wire.Healthy
		}))
	})
}

// TestAPIKeySentAsBearer: llama-server started with --api-key answers 401
// to /metrics and /props; the prober sends the key and never logs it.
func TestAPIKeySentAsBearer(t *testing.T) {
	const key = "sk-test-7f3a9c"
	e := enginetest.Start(t, "llamacpp")
	e.SetAPIKey(key)
	e.Set(1, 0, 77)

	log, buf := logBuffer()
	p, _ := startProberWith(t, spec(t, LlamaCPP), e.URL, 50*time.Millisecond, func(c *Config) { c.Logger = log })
	checkFor(t, 5*time.Second, want(p, "degraded without the key: /metrics answers 401", func(s State) bool {
		return s.Health == wire.Degraded && strings.Contains(s.Reason, "HTTP 401")
	}))
	p.Stop()

	p, _ = startProberWith(t, spec(t, LlamaCPP), e.URL, 50*time.Millisecond, func(c *Config) { c.Logger, c.APIKey = log, key })
	checkFor(t, 5*time.Second, want(p, "healthy with the key, load and version read", func(s State) bool {
		return s.Health == wire.Healthy && s.Status == wire.StatusBusy && progressIs(s, 77) && s.Version == e.Version
	}))
	for _, path := range []string{"/metrics", "/props"} {
		if !e.Authorized(path) {
			t.Errorf("%s: request carried no bearer token", path)
		}
	}
	if strings.Contains(buf.String(), key) {
		t.Fatalf("the API key is in the log:\n%s", buf.String())
	}
}

func TestKVCacheAndSleep(t *testing.T) {
	for _, k := range []Kind{VLLM, LlamaCPP, SGLang} {
		t.Run(string(k), func(t *testing.T) {
			e := enginetest.Start(t, string(k))
			e.SetKV(0.625)
			p, _ := startProber(t, spec(t, k), e.URL, 50*time.Millisecond)
			checkFor(t, 5*time.Second, want(p, "kv cache 62.5%", func(s State) bool {
				return s.Metrics.KVCachePercent != nil && *s.Metrics.KVCachePercent == 62.5
			}))
		})
	}
	e := enginetest.Start(t, "vllm")
	p, _ := startProber(t, spec(t, VLLM), e.URL, 50*time.Millisecond)
	checkFor(t, 5*time.Second, want(p, "ready", func(s State) bool { return s.Status == wire.StatusReady }))
	e.SetSleeping(true)
	checkFor(t, 5*time.Second, want(p, "a sleeping vLLM is draining, not ready, and healthy", func(s State) bool {
		return s.Status == wire.StatusDraining && s.Metrics.Sleeping && s.Health == wire.Healthy
	}))
	e.SetSleeping(false)
	checkFor(t, 5*time.Second, want(p, "ready once awake", func(s State) bool { return s.Status == wire.StatusReady && !s.Metrics.Sleeping }))
}

// TestTimeoutWhileFullKeepsBusy is an old llama-server whose HTTP threads
// are all taken by requests: probes time out exactly when it is full. The
// last reading (busy) stands, stale; no state in between says ready.
func TestTimeoutWhileFullKeepsBusy(t *testing.T) {
	e := enginetest.Start(t, "llamacpp")
	e.Set(2, 2, 40)
	p, rec := startProber(t, spec(t, LlamaCPP), e.URL, 50*time.Millisecond)
	checkFor(t, 5*time.Second, want(p, "busy and full", func(s State) bool { return s.Status == wire.StatusBusy && !s.Stale }))
	before := p.Latest().Probes
	e.SetHang(true)
	checkFor(t, 5*time.Second, want(p, "unhealthy, stale, still busy with the last reading, five timeouts", func(s State) bool {
		return s.Health == wire.Unhealthy && s.Stale && strings.Contains(s.Reason, "no answer in time") &&
			s.Status == wire.StatusBusy && is(s.Metrics.Running, 2) && progressIs(s, 40) && s.Probes >= before+5
	}))
	if rec.any(func(s State) bool { return s.Probes > before && s.Status == wire.StatusReady }) {
		t.Fatal("a timed-out probe turned the worker ready")
	}
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
		{"bad selector", func(c *Config) { c.Spec.Running = `x{a=b}` }, "metric selector"},
		{"unclosed selector", func(c *Config) { c.Spec.Progress = `x{a="b"` }, "no closing }"},
		{"key with a line break", func(c *Config) { c.APIKey = "a\nb" }, "line break"},
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
