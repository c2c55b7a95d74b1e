package integration

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/wire"
	"github.com/rs/zerolog"
)

// expiredBetween returns the keys matching match that expired in [from, to).
func (w *kvWatch) expiredBetween(match func(string) bool, from, to time.Time) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for k, ts := range w.expiries {
		if !match(k) {
			continue
		}
		for _, at := range ts {
			if !at.Before(from) && at.Before(to) {
				out = append(out, k)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// ops returns every operation seen on the keys matching match, in order.
func (w *kvWatch) ops(match func(string) bool) []seen {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []seen
	for _, s := range w.log {
		if match(s.key) {
			out = append(out, s)
		}
	}
	return out
}

// left reports whether key got a delete marker after a put, and expired whether it got a purge.
func (w *kvWatch) left(key string) (left, expired bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.leaves[key]) > 0, len(w.expiries[key]) > 0
}

// get returns key's value if it is present.
func (w *kvWatch) get(key string) (*wire.WorkerEntry, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.entry[key], w.putAt[key]
}

// conflicted reports whether key's value ever carried conflict: true.
func (w *kvWatch) conflicted(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conflict[key]
}

// newProxy starts a toxiproxy proxy (the Go library) in front of a NATS
// server's client URL and returns it with its own URL.
func newProxy(t *testing.T, serverURL string) (*toxiproxy.Proxy, string) {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, t.Name(), "127.0.0.1:0", strings.TrimPrefix(serverURL, "nats://"))
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p, "nats://" + p.Listen
}

// addToxic adds a toxic given as toxiproxy's JSON.
func addToxic(t *testing.T, p *toxiproxy.Proxy, js string) {
	t.Helper()
	if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatalf("add toxic %s: %v", js, err)
	}
}

// blackhole drops everything through p in both directions (toxiproxy's
// timeout toxic with timeout 0) until the returned function is called.
func blackhole(t *testing.T, p *toxiproxy.Proxy) (restore func()) {
	t.Helper()
	for _, dir := range []string{"upstream", "downstream"} {
		addToxic(t, p, fmt.Sprintf(`{"name":"blackhole_%s","type":"timeout","stream":"%s","attributes":{"timeout":0}}`, dir, dir))
	}
	return func() {
		for _, dir := range []string{"upstream", "downstream"} {
			if err := p.Toxics.RemoveToxic(context.Background(), "blackhole_"+dir); err != nil {
				t.Errorf("remove toxic: %v", err)
			}
		}
	}
}

// counterSum gathers c and sums the samples of the metrics whose name
// contains sub, and whose labels include every name=value in labels.
func counterSum(t *testing.T, c prometheus.Collector, sub string, labels ...string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if !strings.Contains(mf.GetName(), sub) {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, l := range labels {
				name, val, _ := strings.Cut(l, "=")
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == name && lp.GetValue() == val {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func (l *rawLoad) key(i int) string { return fmt.Sprintf("%s.w%d", l.hive, i) }

// goodbye makes the first n workers send a goodbye (the next seq of each)
// and stop beating.
func (l *rawLoad) goodbye(t *testing.T, n int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byes = n
	for i := range n {
		if err := l.beat(i, l.round+1, true); err != nil {
			t.Fatal(err)
		}
		l.sent++
	}
	if err := l.nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// stop ends the beating and returns how many beats were sent and when it stopped.
func (l *rawLoad) stop() (uint64, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	_ = l.nc.Flush()
	return l.sent, time.Now()
}
