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
// them. Metric names are Prometheus metric family names; a family with
// several series (vLLM's per-engine label under data parallelism) is summed.
// A histogram family counts by its sample sum. An empty name is not read.
type Spec struct {
	Kind Kind
	// HealthPath answers 2xx when the engine serves.
	HealthPath string
	// MetricsPath serves Prometheus text; empty reads no metrics.
	MetricsPath string
	// Running is the gauge of requests being processed; Waiting of requests
	// queued; Tokens the counter of generated tokens.
	Running, Waiting, Tokens string
	// ModelLabel is a label on the metrics that names the served model.
	ModelLabel string
	// InfoPath serves a JSON object whose InfoModelKey and InfoVersionKey
	// string members name the model and the engine version; empty reads none.
	InfoPath                     string
	InfoModelKey, InfoVersionKey string
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
		// vllm/v1/metrics/loggers.py (PrometheusStatLogger): gauges
		// vllm:num_requests_running and vllm:num_requests_waiting, counter
		// vllm:generation_tokens_total, each labelled model_name and engine.
		// vllm/entrypoints/openai/api_server.py: GET /health answers 200 once
		// the engine runs; GET /version answers {"version": "…"}.
		s.Running, s.Waiting, s.Tokens = "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:generation_tokens_total"
		s.ModelLabel = "model_name"
		s.InfoPath, s.InfoVersionKey = "/version", "version"
	case LlamaCPP:
		// tools/server/README.md of ggml-org/llama.cpp: GET /health answers
		// 503 {"error": {"code": 503, "message": "Loading model", …}} while the
		// model loads and 200 {"status": "ok"} when ready. GET /metrics (with
		// --metrics) has gauges llamacpp:requests_processing and
		// llamacpp:requests_deferred and counter llamacpp:tokens_predicted_total.
		// GET /props carries model_path and build_info.
		s.Running, s.Waiting, s.Tokens = "llamacpp:requests_processing", "llamacpp:requests_deferred", "llamacpp:tokens_predicted_total"
		s.LoadingStatus, s.LoadingText = 503, "Loading model"
		s.InfoPath, s.InfoModelKey, s.InfoVersionKey = "/props", "model_path", "build_info"
	case TGI:
		// docs/source/reference/metrics.md of huggingface/text-generation-inference:
		// gauges tgi_batch_current_size (current batch) and tgi_queue_size,
		// histogram tgi_request_generated_tokens (tokens per finished request:
		// its sum counts every generated token once the request ends).
		// router/src/server.rs: GET /health answers 200 when the model serves;
		// GET /info carries model_id and version.
		s.Running, s.Waiting, s.Tokens = "tgi_batch_current_size", "tgi_queue_size", "tgi_request_generated_tokens"
		s.InfoPath, s.InfoModelKey, s.InfoVersionKey = "/info", "model_id", "version"
	case SGLang:
		// docs/references/production_metrics.md and
		// python/sglang/srt/metrics/collector.py of sgl-project/sglang (metrics
		// with --enable-metrics): gauges sglang:num_running_reqs and
		// sglang:num_queue_reqs, counter sglang:generation_tokens_total, each
		// labelled model_name. python/sglang/srt/entrypoints/http_server.py:
		// GET /health answers 200 when the server serves; GET /get_server_info
		// carries model_path and version.
		s.Running, s.Waiting, s.Tokens = "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:generation_tokens_total"
		s.ModelLabel = "model_name"
		s.InfoPath, s.InfoModelKey, s.InfoVersionKey = "/get_server_info", "model_path", "version"
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
	for _, p := range []struct{ name, v string }{{"health path", s.HealthPath}, {"metrics path", s.MetricsPath}, {"info path", s.InfoPath}} {
		if p.v != "" && !strings.HasPrefix(p.v, "/") {
			return fmt.Errorf("%w: %s %q must start with /", ErrInvalidConfig, p.name, p.v)
		}
	}
	switch {
	case s.HealthPath == "":
		return fmt.Errorf("%w: a health path is required", ErrInvalidConfig)
	case s.Grace <= 0 || s.StartGrace <= 0:
		return fmt.Errorf("%w: graces must be positive, got %s and %s", ErrInvalidConfig, s.Grace, s.StartGrace)
	case s.MetricsPath == "" && (s.Running != "" || s.Waiting != "" || s.Tokens != ""):
		return fmt.Errorf("%w: metric names need a metrics path", ErrInvalidConfig)
	}
	return nil
}
