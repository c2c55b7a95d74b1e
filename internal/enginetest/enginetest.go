// Package enginetest serves what vLLM, llama.cpp's llama-server, TGI and
// SGLang answer, from a real loopback HTTP server. The bodies are replayed
// from testdata: text captured from a real llama-server (b4747), and for the
// others text built from their current source (testdata/README.md says
// which). A test moves the engine's state (loading, running and waiting
// requests, the per-step work counter, the per-request counter, KV-cache
// use, sleep) and the fake rewrites only those series' values in the
// replayed text, so a probe that reads a renamed family, or the counter
// that moves only when a request finishes, fails the test.
package enginetest

import (
	"embed"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

//go:embed testdata
var fixtures embed.FS

// layout names, per engine, the series the fake moves and its info endpoint.
// It is the fake's own knowledge of the engine, kept apart from the engine
// package's presets on purpose.
type layout struct {
	running, waiting string // gauges
	step             string // counter that grows on every forward step
	finished         string // counter that grows only when a request finishes
	kv               string // KV-cache use, a fraction
	awake, asleep    string // sleep state gauges (vLLM)
	info             []string
	infoFile         string
	health           string // body of a healthy /health
	public           []string
}

var layouts = map[string]layout{
	"vllm": {
		running: `vllm:num_requests_running`, waiting: `vllm:num_requests_waiting`,
		step: `vllm:generation_tokens_total`, finished: `vllm:request_generation_tokens_sum`,
		kv: `vllm:kv_cache_usage_perc`, awake: `vllm:engine_sleep_state{sleep_state="awake"}`,
		asleep: `vllm:engine_sleep_state{sleep_state="weights_offloaded"}`,
		info:   []string{"/version"}, infoFile: "vllm/version.json",
	},
	"llamacpp": {
		running: `llamacpp:requests_processing`, waiting: `llamacpp:requests_deferred`,
		step: `llamacpp:n_decode_total`, finished: `llamacpp:tokens_predicted_total`,
		kv:   `llamacpp:kv_cache_usage_ratio`,
		info: []string{"/props"}, infoFile: "llamacpp/props.json",
		health: "llamacpp/health.json",
		// examples/server/server.cpp (b4747), middleware_validate_api_key.
		public: []string{"/health", "/models", "/v1/models", "/"},
	},
	"tgi": {
		running: `tgi_batch_current_size`, waiting: `tgi_queue_size`,
		step: `tgi_batch_inference_count{method="decode"}`, finished: `tgi_request_generated_tokens_sum`,
		info: []string{"/info"}, infoFile: "tgi/info.json",
	},
	"sglang": {
		running: `sglang:num_running_reqs`, waiting: `sglang:num_queue_reqs`,
		step: `sglang:realtime_tokens_total{mode="decode"}`, finished: `sglang:generation_tokens_total`,
		kv:   `sglang:token_usage`,
		info: []string{"/server_info", "/get_server_info"}, infoFile: "sglang/server_info.json",
	},
}

// Engine is one fake engine. Its setters may be called concurrently with
// requests.
type Engine struct {
	Kind string
	URL  string
	// Model and Version are what the replayed info endpoint says.
	Model, Version string

	lay     layout
	metrics string // replayed /metrics text
	info    string // replayed info body

	mu       sync.Mutex
	loading  bool
	running  int
	waiting  int
	steps    uint64
	finished uint64
	kv       float64
	sleeping bool
	fail     int             // health status to answer instead of 200; 0 = healthy
	hang     bool            // every request hangs until the client gives up
	failing  map[string]int  // path → status answered instead
	key      string          // API key required, "" for none
	hits     map[string]int  // requests per path
	auth     map[string]bool // path → carried the right bearer token
}

// Start serves kind's endpoints on 127.0.0.1 until the test ends. "generic"
// serves app_running, app_waiting and app_tokens_total.
func Start(t testing.TB, kind string) *Engine {
	t.Helper()
	e := &Engine{Kind: kind, failing: map[string]int{}, hits: map[string]int{}, auth: map[string]bool{}}
	if lay, ok := layouts[kind]; ok {
		e.lay = lay
		e.metrics = e.fixture(t, kind+"/metrics.txt")
		e.info = e.fixture(t, lay.infoFile)
		e.Model, e.Version = infoFields(kind, e.info)
		for _, sel := range []string{lay.running, lay.waiting, lay.step, lay.finished, lay.kv, lay.awake} {
			if sel != "" && !strings.Contains(e.metrics, "\n"+name(sel)) && !strings.HasPrefix(e.metrics, name(sel)) {
				t.Fatalf("enginetest: %s fixture has no series %s", kind, sel)
			}
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(srv.Close)
	e.URL = srv.URL
	return e
}

func (e *Engine) fixture(t testing.TB, path string) string {
	t.Helper()
	b, err := fixtures.ReadFile("testdata/" + path)
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	return string(b)
}

// infoFields pulls the served model name and version out of an info body,
// the way each engine's own clients read them.
func infoFields(kind, body string) (model, version string) {
	str := func(k string) string {
		_, rest, ok := strings.Cut(body, `"`+k+`":"`)
		if !ok {
			return ""
		}
		v, _, _ := strings.Cut(rest, `"`)
		return v
	}
	switch kind {
	case "vllm":
		return "llama-8b", str("version") // vLLM names the model by the metrics' model_name
	case "llamacpp":
		// The served name: /props' model_alias where the build has it, else
		// /v1/models' id (testdata/llamacpp/models.json, started with --alias).
		return cmpOr(str("model_alias"), "tiny-rbee"), str("build_info")
	case "tgi":
		return str("model_id"), str("version")
	case "sglang":
		return str("served_model_name"), str("version")
	}
	return "", ""
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Set changes the load the engine reports: running and waiting requests,
// and the per-step work counter (decode steps or generated tokens).
func (e *Engine) Set(running, waiting int, steps uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running, e.waiting, e.steps = running, waiting, steps
}

// SetFinished sets the counter that grows only when a request finishes
// (llama-server's tokens_predicted_total, SGLang's generation_tokens_total,
// TGI's and vLLM's per-request generated-token histograms).
func (e *Engine) SetFinished(n uint64) { e.mu.Lock(); e.finished = n; e.mu.Unlock() }

// SetKV sets the KV-cache use, a fraction from 0 to 1.
func (e *Engine) SetKV(frac float64) { e.mu.Lock(); e.kv = frac; e.mu.Unlock() }

// SetSleeping puts vLLM to sleep (level 1) or wakes it; /health still
// answers 200 while it sleeps, as vLLM's does.
func (e *Engine) SetSleeping(v bool) { e.mu.Lock(); e.sleeping = v; e.mu.Unlock() }

// SetLoading makes llama-server's /health answer 503 "Loading model" (other
// kinds refuse nothing while loading: they are not listening yet).
func (e *Engine) SetLoading(v bool) { e.mu.Lock(); e.loading = v; e.mu.Unlock() }

// SetFail makes /health answer code; 0 restores 200.
func (e *Engine) SetFail(code int) { e.mu.Lock(); e.fail = code; e.mu.Unlock() }

// SetHang makes every request wait until the client gives up, as a
// llama-server whose HTTP threads are all taken does.
func (e *Engine) SetHang(v bool) { e.mu.Lock(); e.hang = v; e.mu.Unlock() }

// SetMetricsFail makes /metrics answer 500.
func (e *Engine) SetMetricsFail(v bool) {
	code := 0
	if v {
		code = http.StatusInternalServerError
	}
	e.SetPathFail("/metrics", code)
}

// SetPathFail makes path answer code (a proxy that forwards only some
// paths answers 404); 0 restores it.
func (e *Engine) SetPathFail(path string, code int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if code == 0 {
		delete(e.failing, path)
		return
	}
	e.failing[path] = code
}

// InfoPath returns the engine's info endpoint.
func (e *Engine) InfoPath() string {
	if len(e.lay.info) == 0 {
		return ""
	}
	return e.lay.info[0]
}

// SetAPIKey makes every path but llama-server's public ones (/health,
// /models, /v1/models) answer 401 unless the request carries
// "Authorization: Bearer key"; "" turns the check off.
func (e *Engine) SetAPIKey(key string) { e.mu.Lock(); e.key = key; e.mu.Unlock() }

// Hits returns how many requests path has had.
func (e *Engine) Hits(path string) int { e.mu.Lock(); defer e.mu.Unlock(); return e.hits[path] }

// Authorized reports whether the last request to path carried the right key.
func (e *Engine) Authorized(path string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.auth[path]
}

// Probes returns how many health requests the engine has answered or held.
func (e *Engine) Probes() int { return e.Hits("/health") }

func (e *Engine) serve(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	e.mu.Lock()
	e.hits[path]++
	e.auth[path] = e.key != "" && r.Header.Get("Authorization") == "Bearer "+e.key
	hang, fail, code, key, loading := e.hang, e.fail, e.failing[path], e.key, e.loading
	body := ""
	if path == "/metrics" {
		body = e.render()
	}
	e.mu.Unlock()
	switch {
	case hang:
		<-r.Context().Done()
		return
	case key != "" && !e.public(path) && r.Header.Get("Authorization") != "Bearer "+key:
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, e.mustFixture("llamacpp/metrics_401.json"))
		return
	case code != 0:
		w.WriteHeader(code)
		return
	}
	switch {
	case path == "/health":
		switch {
		case loading && e.Kind == "llamacpp":
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, e.mustFixture("llamacpp/health_loading.json"))
		case fail != 0:
			w.WriteHeader(fail)
		case e.lay.health != "":
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			fmt.Fprint(w, strings.TrimSpace(e.mustFixture(e.lay.health)))
		}
	case path == "/metrics":
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, body)
	case e.isInfo(path):
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, e.info)
	case path == "/v1/models" && e.Kind == "llamacpp":
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		fmt.Fprint(w, e.mustFixture("llamacpp/models.json"))
	default:
		http.NotFound(w, r)
	}
}

func (e *Engine) mustFixture(path string) string {
	b, err := fixtures.ReadFile("testdata/" + path)
	if err != nil {
		return ""
	}
	return string(b)
}

func (e *Engine) public(path string) bool {
	if e.lay.public == nil {
		return path == "/health"
	}
	for _, p := range e.lay.public {
		if p == path {
			return true
		}
	}
	return false
}

func (e *Engine) isInfo(path string) bool {
	for _, p := range e.lay.info {
		if p == path {
			return true
		}
	}
	return false
}

// render returns the replayed /metrics text with the moved series' values
// set; e.mu is held.
func (e *Engine) render() string {
	if e.lay.running == "" {
		return fmt.Sprintf("# TYPE app_running gauge\napp_running %d\n# TYPE app_waiting gauge\napp_waiting %d\n# TYPE app_tokens_total counter\napp_tokens_total %d\n", e.running, e.waiting, e.steps)
	}
	awake, asleep := 1.0, 0.0
	if e.sleeping {
		awake, asleep = 0, 1
	}
	set := []struct {
		sel string
		v   float64
	}{
		{e.lay.running, float64(e.running)}, {e.lay.waiting, float64(e.waiting)},
		{e.lay.step, float64(e.steps)}, {e.lay.finished, float64(e.finished)},
		{e.lay.kv, e.kv}, {e.lay.awake, awake}, {e.lay.asleep, asleep},
	}
	lines := strings.Split(e.metrics, "\n")
	for i, l := range lines {
		if l == "" || l[0] == '#' {
			continue
		}
		for _, s := range set {
			if s.sel != "" && selects(s.sel, l) {
				sp := strings.LastIndexByte(l, ' ')
				lines[i] = l[:sp+1] + strconv.FormatFloat(s.v, 'g', -1, 64)
			}
		}
	}
	return strings.Join(lines, "\n")
}

func name(sel string) string { n, _, _ := strings.Cut(sel, "{"); return n }

// selects reports whether the sample line l is a series sel names:
// the same metric name and every label matcher of sel among its labels.
func selects(sel, l string) bool {
	n, labels, _ := strings.Cut(sel, "{")
	end := strings.IndexAny(l, "{ ")
	if end < 0 || l[:end] != n {
		return false
	}
	for _, m := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
		if m != "" && !strings.Contains(l, m) {
			return false
		}
	}
	return true
}
