package engine

import (
	"fmt"
	"strings"
	"time"
)

// Kind names an engine preset.
type Kind string

// Kinds with a preset, and Generic, whose endpoints and metric names come
// from the caller.
const (
	VLLM     Kind = "vllm"
	LlamaCPP Kind = "llamacpp"
	TGI      Kind = "tgi"
	SGLang   Kind = "sglang"
	Generic  Kind = "generic"
)

// Kinds lists every Kind, presets first.
var Kinds = []Kind{VLLM, LlamaCPP, TGI, SGLang, Generic}

// Default graces: how long an engine may fail its probes before it is
// reported stopped. Kubernetes' default liveness probe gives up after three
// failures ten seconds apart; Grace matches it. StartGrace covers model
// loading, which takes minutes for large models (vLLM and SGLang answer
// nothing while they load).
const (
	DefaultGrace      = 30 * time.Second
	DefaultStartGrace = 10 * time.Minute
)

// Spec says where an engine reports its health and load and what it calls
// them. A metric is named by a selector: a Prometheus metric family name,
// optionally with label matchers, e.g. `sglang:realtime_tokens_total{mode="decode"}`.
// A selector that matches several series (vLLM's per-engine label under data
// parallelism, SGLang's per-rank series) is summed, except KVCache, of which
// the highest is taken. A histogram counts by its sample sum. An empty
// selector is not read.
type Spec struct {
	Kind Kind
	// HealthPath answers 2xx when the engine serves.
	HealthPath string
	// MetricsPath serves Prometheus text; empty reads no metrics.
	MetricsPath string
	// Running is the gauge of requests being processed; Waiting of requests
	// queued.
	Running, Waiting string
	// Progress is a counter of the engine's work that grows on every
	// forward step while it generates (decode steps, generated tokens).
	Progress string
	// ProgressPerRequest is a counter that grows only when a request
	// finishes, read when Progress is absent (an engine build without the
	// per-step counter). A long generation then looks frozen, so stall
	// detection needs a stall window above the longest request; the prober
	// says so once.
	ProgressPerRequest string
	// KVCache selects the gauge of KV-cache use as a fraction (0 to 1); the
	// first selector whose family is present is read.
	KVCache []string
	// Awake selects a gauge that is 0 while the engine sleeps (it answers
	// its health endpoint but serves nothing until woken).
	Awake string
	// ModelLabel is a label on the metrics that names the served model.
	ModelLabel string
	// InfoPath serves a JSON object whose InfoModelKeys (the first present
	// non-empty string wins) and InfoVersionKey members name the model and
	// the engine version; empty reads none.
	InfoPath       string
	InfoModelKeys  []string
	InfoVersionKey string
	// ModelsPath serves the OpenAI-compatible model list, whose first
	// entry's id is the name the engine serves. It is read with the info
	// endpoint and wins over every InfoModelKeys member but the first (an
	// explicit alias); its failure costs nothing but that name.
	ModelsPath string
	// LoadingStatus and LoadingText mark a health answer that means "the
	// model is loading": that HTTP status with LoadingText in its body.
	LoadingStatus int
	LoadingText   string
	// Grace is how long probes may fail after the last good one before the
	// engine is reported stopped; StartGrace the same before the first good one.
	Grace, StartGrace time.Duration
}

// Preset returns the Spec of a known engine. It returns an error wrapping
// ErrInvalidConfig for an unknown kind; Generic returns a Spec with only
// the conventional /health and /metrics paths, to be completed by the caller.
func Preset(k Kind) (Spec, error) {
	s := Spec{Kind: k, HealthPath: "/health", MetricsPath: "/metrics", Grace: DefaultGrace, StartGrace: DefaultStartGrace}
	switch k {
	case VLLM:
		// vllm/v1/metrics/loggers.py (PrometheusStatLogger), labels
		// model_name (the served model name) and engine: gauges
		// vllm:num_requests_running, vllm:num_requests_waiting,
		// vllm:kv_cache_usage_perc ("1 means 100 percent usage"; before it,
		// vllm:gpu_cache_usage_perc) and vllm:engine_sleep_state{sleep_state}
		// ("awake = 0 means engine is sleeping"); counter
		// vllm:generation_tokens_total, recorded from every engine step's
		// IterationStats. vllm/entrypoints/serve/instrumentator/health.py:
		// GET /health answers 200 once the engine runs (also while it
		// sleeps); .../instrumentator/basic.py: GET /version answers
		// {"version": "…"}.
		s.Running, s.Waiting, s.Progress = "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:generation_tokens_total"
		s.KVCache = []string{"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"}
		s.Awake = `vllm:engine_sleep_state{sleep_state="awake"}`
		s.ModelLabel = "model_name"
		s.InfoPath, s.InfoVersionKey = "/version", "version"
	case LlamaCPP:
		// tools/server/server.cpp (examples/server/server.cpp up to b4747)
		// of ggml-org/llama.cpp: GET /health answers 503 {"error": {"code":
		// 503, "message": "Loading model", …}} while the model loads and 200
		// {"status": "ok"} when ready. GET /metrics (with --metrics): gauges
		// llamacpp:requests_processing, llamacpp:requests_deferred and
		// llamacpp:kv_cache_usage_ratio, counter llamacpp:n_decode_total
		// (bumped on every llama_decode call). Its
		// llamacpp:tokens_predicted_total grows only when a request
		// finishes. GET /props carries model_alias (--alias; newer builds),
		// model_path and build_info; GET /v1/models (public even with
		// --api-key) lists the served name, the alias or else the path.
		s.Running, s.Waiting, s.Progress = "llamacpp:requests_processing", "llamacpp:requests_deferred", "llamacpp:n_decode_total"
		s.ProgressPerRequest = "llamacpp:tokens_predicted_total"
		s.KVCache = []string{"llamacpp:kv_cache_usage_ratio"}
		s.LoadingStatus, s.LoadingText = 503, "Loading model"
		s.InfoPath, s.InfoModelKeys, s.InfoVersionKey = "/props", []string{"model_alias", "model_path"}, "build_info"
		s.ModelsPath = "/v1/models"
	case TGI:
		// backends/v3/src/backend.rs and backends/v3/src/queue.rs (listed in
		// docs/source/reference/metrics.md) of
		// huggingface/text-generation-inference: gauges
		// tgi_batch_current_size (current batch) and tgi_queue_size, counter
		// tgi_batch_inference_count{method="prefill"|"decode"}, bumped by
		// every prefill and decode forward pass. Its
		// tgi_request_generated_tokens histogram grows only when a request
		// finishes. TGI exports no KV-cache use. router/src/server.rs:
		// GET /health answers 200 when the model serves; GET /info carries
		// model_id and version.
		s.Running, s.Waiting, s.Progress = "tgi_batch_current_size", "tgi_queue_size", `tgi_batch_inference_count{method="decode"}`
		s.ProgressPerRequest = "tgi_request_generated_tokens"
		s.InfoPath, s.InfoModelKeys, s.InfoVersionKey = "/info", []string{"model_id"}, "version"
	case SGLang:
		// python/sglang/srt/observability/metrics_collector.py of
		// sgl-project/sglang (metrics with --enable-metrics), labelled
		// model_name (the served model name) and per rank: gauges
		// sglang:num_running_reqs, sglang:num_queue_reqs and
		// sglang:token_usage (a fraction of the KV pool), counter
		// sglang:realtime_tokens_total{mode="decode"}, "updated on each log
		// interval" of the scheduler's decode loop.
		// Its sglang:generation_tokens_total grows only when a request
		// finishes. python/sglang/srt/entrypoints/http_server.py: GET /health
		// answers 200 when the server serves; GET /server_info (the
		// deprecated /get_server_info logs a warning on every call) carries
		// served_model_name, model_path and version.
		s.Running, s.Waiting, s.Progress = "sglang:num_running_reqs", "sglang:num_queue_reqs", `sglang:realtime_tokens_total{mode="decode"}`
		s.ProgressPerRequest = "sglang:generation_tokens_total"
		s.KVCache = []string{"sglang:token_usage"}
		s.ModelLabel = "model_name"
		s.InfoPath, s.InfoModelKeys, s.InfoVersionKey = "/server_info", []string{"served_model_name", "model_path"}, "version"
	case Generic:
	default:
		return Spec{}, fmt.Errorf("%w: engine %q: want one of %s", ErrInvalidConfig, k, kindList())
	}
	return s, nil
}

func kindList() string {
	names := make([]string, len(Kinds))
	for i, k := range Kinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}

// Validate returns an error wrapping ErrInvalidConfig if s cannot be probed.
func (s Spec) Validate() error {
	for _, p := range []struct{ name, v string }{{"health path", s.HealthPath}, {"metrics path", s.MetricsPath}, {"info path", s.InfoPath}, {"models path", s.ModelsPath}} {
		if p.v != "" && !strings.HasPrefix(p.v, "/") {
			return fmt.Errorf("%w: %s %q must start with /", ErrInvalidConfig, p.name, p.v)
		}
	}
	sels := append([]string{s.Running, s.Waiting, s.Progress, s.ProgressPerRequest, s.Awake}, s.KVCache...)
	named := false
	for _, sel := range sels {
		if sel == "" {
			continue
		}
		named = true
		if _, err := parseSelector(sel); err != nil {
			return err
		}
	}
	switch {
	case s.HealthPath == "":
		return fmt.Errorf("%w: a health path is required", ErrInvalidConfig)
	case s.Grace <= 0 || s.StartGrace <= 0:
		return fmt.Errorf("%w: graces must be positive, got %s and %s", ErrInvalidConfig, s.Grace, s.StartGrace)
	case s.MetricsPath == "" && named:
		return fmt.Errorf("%w: metric names need a metrics path", ErrInvalidConfig)
	}
	return nil
}

// selector is a parsed metric selector: a family name and label matchers.
type selector struct {
	name   string
	labels map[string]string
}

// parseSelector parses `name` or `name{a="x",b="y"}`. It returns an error
// wrapping ErrInvalidConfig for anything else.
func parseSelector(sel string) (selector, error) {
	bad := func(why string) (selector, error) {
		return selector{}, fmt.Errorf("%w: metric selector %q: %s", ErrInvalidConfig, sel, why)
	}
	name, rest, hasLabels := strings.Cut(sel, "{")
	if name == "" || strings.ContainsAny(name, " \t\"}=,") {
		return bad("want a metric name, optionally with {label=\"value\",…}")
	}
	s := selector{name: name}
	if !hasLabels {
		return s, nil
	}
	body, ok := strings.CutSuffix(rest, "}")
	if !ok {
		return bad("no closing }")
	}
	s.labels = map[string]string{}
	for _, part := range strings.Split(body, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" || len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
			return bad(`want label="value" pairs`)
		}
		s.labels[k] = v[1 : len(v)-1]
	}
	return s, nil
}
