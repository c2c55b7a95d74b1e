package queen

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
)

var kinds = []subjects.Kind{subjects.KindWorker, subjects.KindHive, "unknown"}

type counterKey struct {
	kind subjects.Kind
	name string
}

// metrics holds the queen's counters. Counts are plain atomics (read by
// Stats and exported by Collector at scrape time); latencies are Prometheus
// histograms.
type metrics struct {
	acceptedC map[subjects.Kind]*atomic.Uint64
	goodbyeC  map[subjects.Kind]*atomic.Uint64
	rejectedC map[counterKey]*atomic.Uint64
	eventC    map[counterKey]*atomic.Uint64

	inFlight         prometheus.GaugeFunc
	writeErrors      prometheus.Counter
	writeRetries     prometheus.Counter
	writesLost       prometheus.Counter
	writesSuperseded prometheus.Counter
	writeLatency     prometheus.Histogram
	skewSeconds      prometheus.Histogram
}

// newMetrics returns the counters; inFlight reports the writes in flight.
func newMetrics(inFlight func() float64) *metrics {
	m := &metrics{
		acceptedC: map[subjects.Kind]*atomic.Uint64{},
		goodbyeC:  map[subjects.Kind]*atomic.Uint64{},
		rejectedC: map[counterKey]*atomic.Uint64{},
		eventC:    map[counterKey]*atomic.Uint64{},
		inFlight: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rbee_queen_kv_writes_in_flight",
			Help: "Registry writes sent and not yet acknowledged."}, inFlight),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "rbee_queen_kv_write_errors_total",
			Help: "Registry writes that failed (timeout, no responders, stream error)."}),
		writeRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "rbee_queen_kv_write_retries_total",
			Help: "Registry writes sent again after a failure."}),
		writesLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "rbee_queen_kv_writes_lost_total",
			Help: "Registry writes given up after all retries (each is logged)."}),
		writesSuperseded: prometheus.NewCounter(prometheus.CounterOpts{Name: "rbee_queen_kv_writes_superseded_total",
			Help: "Failed registry writes not retried because a newer beat of the same key was written."}),
		writeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rbee_queen_kv_write_seconds",
			Help:    "Time from sending a registry write to its acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		skewSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rbee_queen_clock_skew_seconds",
			Help:    "Absolute difference between the queen's receive time and the sender's sent_at_ms (skew plus transit).",
			Buckets: []float64{0.001, 0.01, 0.1, 0.5, 1, 5, 30, 300, 3600}}),
	}
	for _, k := range kinds {
		m.acceptedC[k] = new(atomic.Uint64)
		m.goodbyeC[k] = new(atomic.Uint64)
		for _, r := range subscriber.Reasons {
			m.rejectedC[counterKey{k, string(r)}] = new(atomic.Uint64)
		}
		for _, e := range registry.EventTypes {
			m.eventC[counterKey{k, string(e)}] = new(atomic.Uint64)
		}
	}
	return m
}

func (m *metrics) accepted(k subjects.Kind) { m.acceptedC[k].Add(1) }
func (m *metrics) goodbye(k subjects.Kind)  { m.goodbyeC[k].Add(1) }
func (m *metrics) rejected(k subjects.Kind, r subscriber.Reason) {
	if c := m.rejectedC[counterKey{k, string(r)}]; c != nil {
		c.Add(1)
	}
}
func (m *metrics) rejectedTotal(r subscriber.Reason) (n uint64) {
	for _, k := range kinds {
		n += m.rejectedC[counterKey{k, string(r)}].Load()
	}
	return n
}
func (m *metrics) event(k subjects.Kind, e registry.EventType) {
	if c := m.eventC[counterKey{k, string(e)}]; c != nil {
		c.Add(1)
	}
}
func (m *metrics) writeDone(d time.Duration) { m.writeLatency.Observe(d.Seconds()) }
func (m *metrics) skew(ms int64) {
	if ms < 0 {
		ms = -ms
	}
	m.skewSeconds.Observe(float64(ms) / 1000)
}

// Stats is a snapshot of the queen's counters.
type Stats struct {
	// Accepted counts accepted beats by kind ("worker", "hive").
	Accepted map[subjects.Kind]uint64
	// Goodbyes counts accepted goodbye beats by kind.
	Goodbyes map[subjects.Kind]uint64
	// Rejected counts rejected messages by reason (all kinds together).
	Rejected map[subscriber.Reason]uint64
	// Events counts registry events by type (all kinds together).
	Events map[registry.EventType]uint64
	// Workers and Hives are the registry sizes the queen's mirror holds.
	Workers, Hives int
	// InFlight is the number of registry writes awaiting acknowledgement.
	InFlight int
}

// Stats returns a snapshot of the counters.
func (q *Queen) Stats() Stats {
	s := Stats{
		Accepted: map[subjects.Kind]uint64{},
		Goodbyes: map[subjects.Kind]uint64{},
		Rejected: map[subscriber.Reason]uint64{},
		Events:   map[registry.EventType]uint64{},
	}
	m := q.metrics
	for _, k := range kinds {
		s.Accepted[k] += m.acceptedC[k].Load()
		s.Goodbyes[k] += m.goodbyeC[k].Load()
		for _, r := range subscriber.Reasons {
			s.Rejected[r] += m.rejectedC[counterKey{k, string(r)}].Load()
		}
		for _, e := range registry.EventTypes {
			s.Events[e] += m.eventC[counterKey{k, string(e)}].Load()
		}
	}
	if q.watcher != nil {
		s.Workers, s.Hives = q.watcher.Sizes()
	}
	s.InFlight = q.w.inFlight()
	return s
}

var (
	descAccepted = prometheus.NewDesc("rbee_queen_beats_accepted_total", "Heartbeats accepted and written to the registry.", []string{"kind"}, nil)
	descGoodbyes = prometheus.NewDesc("rbee_queen_goodbyes_total", "Goodbye beats accepted (the key is deleted).", []string{"kind"}, nil)
	descRejected = prometheus.NewDesc("rbee_queen_beats_rejected_total", "Heartbeats rejected, by kind and reason.", []string{"kind", "reason"}, nil)
	descEvents   = prometheus.NewDesc("rbee_registry_events_total", "Registry events seen by this queen.", []string{"kind", "event"}, nil)
	descSize     = prometheus.NewDesc("rbee_registry_entries", "Entries in the registry.", []string{"kind"}, nil)
)

// Collector returns a Prometheus collector exporting the queen's metrics.
func (q *Queen) Collector() prometheus.Collector { return collector{q} }

type collector struct{ q *Queen }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccepted, descGoodbyes, descRejected, descEvents, descSize} {
		ch <- d
	}
	m := c.q.metrics
	for _, x := range []prometheus.Collector{m.inFlight, m.writeErrors, m.writeRetries, m.writesLost, m.writesSuperseded, m.writeLatency, m.skewSeconds} {
		x.Describe(ch)
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	m := c.q.metrics
	for _, k := range kinds {
		ks := string(k)
		if k != "unknown" {
			ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(m.acceptedC[k].Load()), ks)
			ch <- prometheus.MustNewConstMetric(descGoodbyes, prometheus.CounterValue, float64(m.goodbyeC[k].Load()), ks)
			for _, e := range registry.EventTypes {
				ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(m.eventC[counterKey{k, string(e)}].Load()), ks, string(e))
			}
		}
		for _, r := range subscriber.Reasons {
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(m.rejectedC[counterKey{k, string(r)}].Load()), ks, string(r))
		}
	}
	if c.q.watcher != nil {
		nw, nh := c.q.watcher.Sizes()
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(nw), "worker")
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(nh), "hive")
	}
	for _, x := range []prometheus.Collector{m.inFlight, m.writeErrors, m.writeRetries, m.writesLost, m.writesSuperseded, m.writeLatency, m.skewSeconds} {
		x.Collect(ch)
	}
}
