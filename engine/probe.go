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

// Metrics is what the engine's /metrics said. A value the engine does not
// report is nil.
type Metrics struct {
	// Running is the number of requests being processed.
	Running *int
	// Waiting is the number of requests queued, not yet running.
	Waiting *int
	// Progress is the engine's work counter (Spec.Progress, else
	// Spec.ProgressPerRequest, and then PerRequest is true).
	Progress   *uint64
	PerRequest bool
	// KVCachePercent is the KV-cache use, 0 to 100.
	KVCachePercent *float64
	// Sleeping is true when the engine said it sleeps (Spec.Awake is 0).
	Sleeping bool
	// Model is the served model named by Spec.ModelLabel.
	Model string
}

// Info is what the engine's info endpoint said.
type Info struct {
	Model, Version string
}

// Answer is the outcome of one probe. Each endpoint's failure is kept
// apart, so that it affects only what that endpoint feeds.
type Answer struct {
	// Loading is true when the engine said its model is still loading.
	Loading bool
	// Err is set when the health endpoint did not answer 2xx (nor loading);
	// it wraps ErrProbe, and context.DeadlineExceeded on a timeout.
	Err error
	// Metrics holds what /metrics said when MetricsRead is true;
	// MetricsErr is set when /metrics could not be read.
	Metrics     Metrics
	MetricsRead bool
	MetricsErr  error
	// Info holds what the info endpoint said when InfoRead is true;
	// InfoErr is set when it was asked and could not be read.
	Info     Info
	InfoRead bool
	InfoErr  error
}

// timedOut reports whether err is a probe that got no answer in time.
func timedOut(err error) bool { return errors.Is(err, context.DeadlineExceeded) }

// probe reads health, metrics and, when info is true, the info endpoint
// from base (the engine's URL, no trailing slash). /metrics is read even
// when health fails, unless health ran out of time.
func probe(ctx context.Context, c *http.Client, base string, s Spec, key string, info bool) Answer {
	var a Answer
	code, body, err := get(ctx, c, base+s.HealthPath, key)
	switch {
	case err != nil:
		a.Err = fmt.Errorf("%w: health: %w", ErrProbe, err)
	case s.LoadingStatus != 0 && code == s.LoadingStatus && strings.Contains(string(body), s.LoadingText):
		a.Loading = true
		return a
	case code < 200 || code > 299:
		a.Err = fmt.Errorf("%w: health: HTTP %d%s", ErrProbe, code, snippet(body))
	}
	if a.Err != nil && ctx.Err() != nil {
		return a
	}
	if s.MetricsPath != "" {
		a.Metrics, a.MetricsErr = readMetrics(ctx, c, base+s.MetricsPath, s, key)
		a.MetricsRead = a.MetricsErr == nil
	}
	if info && a.Err == nil && s.InfoPath != "" {
		var alias bool
		a.Info, alias, a.InfoErr = readInfo(ctx, c, base+s.InfoPath, s, key)
		a.InfoRead = a.InfoErr == nil
		if a.InfoRead && !alias && s.ModelsPath != "" {
			if id := servedName(ctx, c, base+s.ModelsPath, key); id != "" {
				a.Info.Model = id
			}
		}
	}
	return a
}

// servedName returns the id of the first model in the OpenAI-compatible
// list at url, or "" when it cannot be read.
func servedName(ctx context.Context, c *http.Client, url, key string) string {
	code, body, err := get(ctx, c, url, key)
	if err != nil || code < 200 || code > 299 {
		return ""
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &list) != nil || len(list.Data) == 0 {
		return ""
	}
	return list.Data[0].ID
}

// get fetches url, with key as a bearer token when set, and returns its
// status and at most maxBody bytes of body.
func get(ctx context.Context, c *http.Client, url, key string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
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
// series s selects.
func readMetrics(ctx context.Context, c *http.Client, url string, s Spec, key string) (Metrics, error) {
	code, body, err := get(ctx, c, url, key)
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
	if v, ok := pick(fams, s.Running, false); ok {
		n := int(min(v, math.MaxInt32))
		m.Running = &n
	}
	if v, ok := pick(fams, s.Waiting, false); ok {
		n := int(min(v, math.MaxInt32))
		m.Waiting = &n
	}
	if v, ok := pick(fams, s.Progress, false); ok {
		n := uint64(min(v, 1<<53))
		m.Progress = &n
	} else if v, ok := pick(fams, s.ProgressPerRequest, false); ok {
		n := uint64(min(v, 1<<53))
		m.Progress, m.PerRequest = &n, true
	}
	for _, sel := range s.KVCache {
		if v, ok := pick(fams, sel, true); ok {
			pct := min(100, v*100)
			m.KVCachePercent = &pct
			break
		}
	}
	if v, ok := pick(fams, s.Awake, false); ok && v == 0 {
		m.Sleeping = true
	}
	if s.ModelLabel != "" {
		m.Model = label(fams, s, s.ModelLabel)
	}
	return m, nil
}

// pick returns the sum (or, with highest, the largest) of the series that
// sel selects; ok is false when sel is empty, selects nothing, or a value is
// not a finite, non-negative number.
func pick(fams map[string]*dto.MetricFamily, sel string, highest bool) (float64, bool) {
	if sel == "" {
		return 0, false
	}
	ps, err := parseSelector(sel)
	if err != nil {
		return 0, false
	}
	f := fams[ps.name]
	if f == nil {
		return 0, false
	}
	var total float64
	found := false
	for _, m := range f.GetMetric() {
		if !matches(m, ps.labels) {
			continue
		}
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
		if highest {
			total = max(total, v)
		} else {
			total += v
		}
		found = true
	}
	return total, found
}

func matches(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		ok := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// label returns the first value of name on the families s reads.
func label(fams map[string]*dto.MetricFamily, s Spec, name string) string {
	for _, sel := range []string{s.Running, s.Waiting, s.Progress} {
		ps, err := parseSelector(sel)
		if err != nil {
			continue
		}
		for _, m := range fams[ps.name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == name && l.GetValue() != "" {
					return l.GetValue()
				}
			}
		}
	}
	return ""
}

// readInfo reads the model and version members of the JSON object at url;
// alias is true when the model came from the first of s.InfoModelKeys.
func readInfo(ctx context.Context, c *http.Client, url string, s Spec, key string) (in Info, alias bool, err error) {
	code, body, err := get(ctx, c, url, key)
	if err != nil {
		return Info{}, false, fmt.Errorf("%w: info: %w", ErrProbe, err)
	}
	if code < 200 || code > 299 {
		return Info{}, false, fmt.Errorf("%w: info: HTTP %d%s", ErrProbe, code, snippet(body))
	}
	var obj map[string]any
	if err := json.Unmarshal(body, &obj); err != nil {
		return Info{}, false, fmt.Errorf("%w: info: %w", ErrProbe, err)
	}
	str := func(k string) string {
		if k == "" {
			return ""
		}
		v, _ := obj[k].(string)
		return v
	}
	for i, k := range s.InfoModelKeys {
		if in.Model = str(k); in.Model != "" {
			alias = i == 0
			break
		}
	}
	in.Version = str(s.InfoVersionKey)
	return in, alias, nil
}
