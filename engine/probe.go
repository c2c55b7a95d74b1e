package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// maxBody bounds what a probe reads from one endpoint: vLLM's /metrics with
// every histogram is about 100 KiB.
const maxBody = 4 << 20

// Metrics is what one good probe read from the engine. A value the engine
// does not report is nil or empty.
type Metrics struct {
	// Running is the number of requests being processed.
	Running *int
	// Waiting is the number of requests queued, not yet running.
	Waiting *int
	// Tokens is the engine's generated-token counter.
	Tokens *uint64
	// Model and Version are what the engine says it serves and is.
	Model, Version string
}

// Answer is the outcome of one probe.
type Answer struct {
	// Loading is true when the engine said its model is still loading.
	Loading bool
	// Metrics holds what /metrics and the info endpoint said; it is set
	// only when Err is nil and Loading is false.
	Metrics Metrics
	// MetricsErr is set when the engine is healthy but /metrics or the
	// info endpoint could not be read.
	MetricsErr error
	// Err is set when the health endpoint did not answer 2xx (nor loading);
	// it wraps ErrProbe, and context.DeadlineExceeded on a timeout.
	Err error
}

// probe reads health, then metrics and info, from base (the engine's URL,
// no trailing slash). info says whether to read the info endpoint.
func probe(ctx context.Context, c *http.Client, base string, s Spec, info bool) Answer {
	code, body, err := get(ctx, c, base+s.HealthPath)
	switch {
	case err != nil:
		return Answer{Err: fmt.Errorf("%w: health: %w", ErrProbe, err)}
	case s.LoadingStatus != 0 && code == s.LoadingStatus && strings.Contains(string(body), s.LoadingText):
		return Answer{Loading: true}
	case code < 200 || code > 299:
		return Answer{Err: fmt.Errorf("%w: health: HTTP %d%s", ErrProbe, code, snippet(body))}
	}
	var a Answer
	if s.MetricsPath != "" {
		a.Metrics, a.MetricsErr = readMetrics(ctx, c, base+s.MetricsPath, s)
	}
	if info && s.InfoPath != "" && a.MetricsErr == nil {
		model, version, err := readInfo(ctx, c, base+s.InfoPath, s)
		if err != nil {
			a.MetricsErr = err
		}
		if model != "" {
			a.Metrics.Model = model
		}
		a.Metrics.Version = version
	}
	return a
}

// get fetches url and returns its status and at most maxBody bytes of body.
func get(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			return 0, nil, fmt.Errorf("no answer in time: %w", ctxErr)
		}
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read body: %w", err)
	}
	return resp.StatusCode, body, nil
}

func snippet(body []byte) string {
	s := strings.TrimSpace(string(body))
	if s == "" {
		return ""
	}
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return ": " + s
}

// readMetrics parses the Prometheus text at url with expfmt and picks the
// families s names.
func readMetrics(ctx context.Context, c *http.Client, url string, s Spec) (Metrics, error) {
	code, body, err := get(ctx, c, url)
	if err != nil {
		return Metrics{}, fmt.Errorf("%w: metrics: %w", ErrProbe, err)
	}
	if code < 200 || code > 299 {
		return Metrics{}, fmt.Errorf("%w: metrics: HTTP %d%s", ErrProbe, code, snippet(body))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return Metrics{}, fmt.Errorf("%w: metrics: %w", ErrProbe, err)
	}
	var m Metrics
	if v, ok := sum(fams[s.Running]); ok {
		n := int(min(v, math.MaxInt32))
		m.Running = &n
	}
	if v, ok := sum(fams[s.Waiting]); ok {
		n := int(min(v, math.MaxInt32))
		m.Waiting = &n
	}
	if v, ok := sum(fams[s.Tokens]); ok {
		n := uint64(v)
		m.Tokens = &n
	}
	if s.ModelLabel != "" {
		m.Model = label(fams, s, s.ModelLabel)
	}
	return m, nil
}

// sum adds up every series of a gauge, counter, untyped or histogram
// (its sample sum) family; ok is false for an absent family or one whose
// values are not finite, non-negative numbers.
func sum(f *dto.MetricFamily) (float64, bool) {
	if f == nil || len(f.GetMetric()) == 0 {
		return 0, false
	}
	var total float64
	for _, m := range f.GetMetric() {
		var v float64
		switch {
		case m.Gauge != nil:
			v = m.GetGauge().GetValue()
		case m.Counter != nil:
			v = m.GetCounter().GetValue()
		case m.Untyped != nil:
			v = m.GetUntyped().GetValue()
		case m.Histogram != nil:
			v = m.GetHistogram().GetSampleSum()
		case m.Summary != nil:
			v = m.GetSummary().GetSampleSum()
		}
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return 0, false
		}
		total += v
	}
	return total, true
}

// label returns the first value of name on the families s reads.
func label(fams map[string]*dto.MetricFamily, s Spec, name string) string {
	for _, fn := range []string{s.Running, s.Waiting, s.Tokens} {
		for _, m := range fams[fn].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == name && l.GetValue() != "" {
					return l.GetValue()
				}
			}
		}
	}
	return ""
}

// readInfo reads the model and version members of the JSON object at url.
func readInfo(ctx context.Context, c *http.Client, url string, s Spec) (model, version string, err error) {
	code, body, err := get(ctx, c, url)
	if err != nil {
		return "", "", fmt.Errorf("%w: info: %w", ErrProbe, err)
	}
	if code < 200 || code > 299 {
		return "", "", fmt.Errorf("%w: info: HTTP %d%s", ErrProbe, code, snippet(body))
	}
	var obj map[string]any
	if err := json.Unmarshal(body, &obj); err != nil {
		return "", "", fmt.Errorf("%w: info: %w", ErrProbe, err)
	}
	str := func(k string) string {
		if k == "" {
			return ""
		}
		v, _ := obj[k].(string)
		return v
	}
	return str(s.InfoModelKey), str(s.InfoVersionKey), nil
}
