// Package enginetest serves the documented HTTP answers of vLLM, llama.cpp's
// llama-server, TGI and SGLang from a real loopback HTTP server, with a state
// a test sets: loading, running and waiting requests, a token counter, and a
// health endpoint that fails or hangs.
package enginetest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// Model and Version are what every fake engine says it serves and is.
const (
	Model   = "meta-llama/Llama-3.1-8B-Instruct"
	Version = "9.8.7"
)

// Engine is one fake engine. Its setters may be called concurrently with
// requests.
type Engine struct {
	Kind string
	URL  string

	mu      sync.Mutex
	loading bool
	running int
	waiting int
	tokens  uint64
	fail    int  // health status to answer instead of 200; 0 = healthy
	hang    bool // health requests hang until the client gives up
	noStats bool // /metrics answers 500
	probes  int
}

// Start serves kind's endpoints on 127.0.0.1 until the test ends.
func Start(t testing.TB, kind string) *Engine {
	t.Helper()
	e := &Engine{Kind: kind}
	srv := httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(srv.Close)
	e.URL = srv.URL
	return e
}

// Set changes the load the engine reports.
func (e *Engine) Set(running, waiting int, tokens uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running, e.waiting, e.tokens = running, waiting, tokens
}

// SetLoading makes llama-server's /health answer 503 "Loading model" (other
// kinds refuse nothing while loading: they are not listening yet).
func (e *Engine) SetLoading(v bool) { e.mu.Lock(); e.loading = v; e.mu.Unlock() }

// SetFail makes /health answer code; 0 restores 200.
func (e *Engine) SetFail(code int) { e.mu.Lock(); e.fail = code; e.mu.Unlock() }

// SetHang makes /health wait until the client gives up.
func (e *Engine) SetHang(v bool) { e.mu.Lock(); e.hang = v; e.mu.Unlock() }

// SetMetricsFail makes /metrics answer 500.
func (e *Engine) SetMetricsFail(v bool) { e.mu.Lock(); e.noStats = v; e.mu.Unlock() }

// Probes returns how many health requests the engine has answered or held.
func (e *Engine) Probes() int { e.mu.Lock(); defer e.mu.Unlock(); return e.probes }

func (e *Engine) serve(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	loading, running, waiting, tokens, fail, hang, noStats := e.loading, e.running, e.waiting, e.tokens, e.fail, e.hang, e.noStats
	if r.URL.Path == "/health" {
		e.probes++
	}
	e.mu.Unlock()
	switch r.URL.Path {
	case "/health":
		switch {
		case hang:
			<-r.Context().Done()
		case loading && e.Kind == "llamacpp":
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}`)
		case fail != 0:
			w.WriteHeader(fail)
		case e.Kind == "llamacpp":
			fmt.Fprint(w, `{"status": "ok"}`)
		}
	case "/metrics":
		if noStats {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, e.metrics(running, waiting, tokens))
	default:
		info := e.info()
		if info == nil || r.URL.Path != info["path"] {
			http.NotFound(w, r)
			return
		}
		delete(info, "path")
		_ = json.NewEncoder(w).Encode(info)
	}
}

// metrics renders the Prometheus text each engine documents.
func (e *Engine) metrics(running, waiting int, tokens uint64) string {
	var b strings.Builder
	switch e.Kind {
	case "vllm":
		l := fmt.Sprintf(`{engine="0",model_name=%q}`, Model)
		fmt.Fprintf(&b, "# HELP vllm:num_requests_running Number of requests in model execution batches.\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running%s %d.0\n", l, running)
		fmt.Fprintf(&b, "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting%s %d.0\n", l, waiting)
		fmt.Fprintf(&b, "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total%s %d.0\n", l, tokens)
		fmt.Fprintf(&b, "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.\n# TYPE vllm:e2e_request_latency_seconds histogram\nvllm:e2e_request_latency_seconds_bucket{engine=\"0\",le=\"0.3\",model_name=%q} 1.0\nvllm:e2e_request_latency_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=%q} 2.0\nvllm:e2e_request_latency_seconds_sum{engine=\"0\",model_name=%q} 1.5\nvllm:e2e_request_latency_seconds_count{engine=\"0\",model_name=%q} 2.0\n", Model, Model, Model, Model)
	case "llamacpp":
		fmt.Fprintf(&b, "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 42\n")
		fmt.Fprintf(&b, "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total %d\n", tokens)
		fmt.Fprintf(&b, "# HELP llamacpp:requests_processing Number of requests processing.\n# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing %d\n", running)
		fmt.Fprintf(&b, "# HELP llamacpp:requests_deferred Number of requests deferred.\n# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred %d\n", waiting)
	case "tgi":
		fmt.Fprintf(&b, "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size %d\n", running)
		fmt.Fprintf(&b, "# TYPE tgi_queue_size gauge\ntgi_queue_size %d\n", waiting)
		fmt.Fprintf(&b, "# TYPE tgi_request_generated_tokens histogram\ntgi_request_generated_tokens_bucket{le=\"1\"} 0\ntgi_request_generated_tokens_bucket{le=\"+Inf\"} 3\ntgi_request_generated_tokens_sum %d\ntgi_request_generated_tokens_count 3\n", tokens)
	case "sglang":
		l := fmt.Sprintf(`{model_name=%q}`, Model)
		fmt.Fprintf(&b, "# HELP sglang:num_running_reqs The number of running requests.\n# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs%s %d.0\n", l, running)
		fmt.Fprintf(&b, "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.\n# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs%s %d.0\n", l, waiting)
		fmt.Fprintf(&b, "# HELP sglang:generation_tokens_total Number of generation tokens processed.\n# TYPE sglang:generation_tokens_total counter\nsglang:generation_tokens_total%s %d.0\n", l, tokens)
	default: // generic: names a test passes by flag
		fmt.Fprintf(&b, "# TYPE app_running gauge\napp_running %d\n# TYPE app_waiting gauge\napp_waiting %d\n# TYPE app_tokens_total counter\napp_tokens_total %d\n", running, waiting, tokens)
	}
	return b.String()
}

// info returns the info endpoint's path and JSON members per engine.
func (e *Engine) info() map[string]any {
	switch e.Kind {
	case "vllm":
		return map[string]any{"path": "/version", "version": Version}
	case "llamacpp":
		return map[string]any{"path": "/props", "model_path": "/models/llama-3.1-8b.gguf", "build_info": Version, "total_slots": 4}
	case "tgi":
		return map[string]any{"path": "/info", "model_id": Model, "version": Version, "max_concurrent_requests": 128}
	case "sglang":
		return map[string]any{"path": "/get_server_info", "model_path": Model, "version": Version}
	}
	return nil
}
