package queen

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
)

// metrics holds the queen's Prometheus vectors. Every series a dashboard
// alerts on is created up front, so a zero is visible before the first event.
type metrics struct {
	accepted    *prometheus.CounterVec
	rejected    *prometheus.CounterVec
	goodbyes    *prometheus.CounterVec
	dropped     prometheus.Counter
	rescued     *prometheus.CounterVec
	supersededC *prometheus.CounterVec
	reserveDrop prometheus.Counter
	coalescedC  *prometheus.CounterVec
	shedC       *prometheus.CounterVec
	writeOut    *prometheus.CounterVec
	conflicts   *prometheus.CounterVec
	marks       *prometheus.CounterVec
	events      *prometheus.CounterVec
	writeLat    prometheus.Histogram
	skewSeconds prometheus.Histogram
	advisoryLag prometheus.Histogram
	migrated    *prometheus.CounterVec
	all         []prometheus.Collector
}

var kinds = []subjects.Kind{subjects.KindWorker, subjects.KindHive, subjects.KindQueen, "unknown"}

func newMetrics() *metrics {
	m := &metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_beats_accepted_total",
			Help: "Heartbeats accepted (then written, coalesced into a newer beat of the key, or shed)."}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_beats_rejected_total",
			Help: "Heartbeats rejected, by kind and reason."}, []string{"kind", "reason"}),
		goodbyes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_goodbyes_total",
			Help: "Goodbye beats accepted (the key is deleted)."}, []string{"kind"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "rbee_queen_beats_dropped_total",
			Help: "Heartbeats the queen's subscription dropped before decoding them (slow consumer)."}),
		rescued: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_beats_rescued_total",
			Help: "Beats held in reserve that no queen took within half an interval, taken then: another queen's share (a frozen or failing peer), or this queen's own after it was stopped."},
			[]string{"kind"}),
		supersededC: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_beats_superseded_total",
			Help: "Beats a newer beat of the same key overtook before the queen admitted them: one held in reserve whose key's newer beat came through this queen's own share first. Neither accepted nor rejected."},
			[]string{"kind"}),
		reserveDrop: prometheus.NewCounter(prometheus.CounterOpts{Name: "rbee_queen_reserve_dropped_total",
			Help: "Beats the reserve's subscription (every beat, held while other queens share the group) dropped (slow consumer)."}),
		coalescedC: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_beats_coalesced_total",
			Help: "Accepted beats replaced by a newer beat of the same key before being written."}, []string{"kind"}),
		shedC: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_beats_shed_total",
			Help: "Beats not written, by reason (stale: its TTL ran out while it waited; stalled: it reached this queen while the queen was stopped, and the other queens' reserves took it)."}, []string{"kind", "reason"}),
		writeOut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_kv_write_failures_total",
			Help: "Registry writes that failed, by outcome: retried, superseded (a newer write of the key replaced it), lost (its TTL ran out; each is logged), reread (the key changed since this queen last saw it: judged again from the registry watch, or read again) or refused (after the re-read: the stored entry is newer, or the key left)."},
			[]string{"kind", "outcome"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_conflicts_total",
			Help: "Beats from a second instance claiming a key another instance holds."}, []string{"kind"}),
		marks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_disconnect_marks_total",
			Help: "Entries marked disconnected after their connection closed without a goodbye."}, []string{"kind"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_registry_events_total",
			Help: "Registry events seen by this queen."}, []string{"kind", "event"}),
		writeLat: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rbee_queen_kv_write_seconds",
			Help:    "Time from sending a registry write to its acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		skewSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rbee_queen_clock_skew_seconds",
			Help:    "Absolute difference between the queen's receive time and the sender's sent_at_ms (skew plus transit; never used for liveness).",
			Buckets: []float64{0.001, 0.01, 0.1, 0.5, 1, 5, 30, 300, 3600}}),
		advisoryLag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rbee_queen_advisory_lag_seconds",
			Help:    "Time from a server's DISCONNECT advisory to the queen queuing the disconnected marks (including a 250 ms grace for a goodbye).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		migrated: newMigrationCounter(),
	}
	for _, k := range kinds {
		ks := string(k)
		m.accepted.WithLabelValues(ks)
		m.goodbyes.WithLabelValues(ks)
		m.coalescedC.WithLabelValues(ks)
		m.rescued.WithLabelValues(ks)
		m.supersededC.WithLabelValues(ks)
		m.shedC.WithLabelValues(ks, "stale")
		m.shedC.WithLabelValues(ks, "stalled")
		m.conflicts.WithLabelValues(ks)
		m.marks.WithLabelValues(ks)
		for _, o := range []string{"retried", "superseded", "lost", "reread", "refused"} {
			m.writeOut.WithLabelValues(ks, o)
		}
		for _, r := range subscriber.Reasons {
			m.rejected.WithLabelValues(ks, string(r))
		}
		for _, e := range registry.EventTypes {
			m.events.WithLabelValues(ks, string(e))
		}
	}
	m.all = []prometheus.Collector{m.accepted, m.rejected, m.goodbyes, m.dropped, m.rescued, m.supersededC, m.reserveDrop, m.coalescedC, m.shedC, m.writeOut,
		m.conflicts, m.marks, m.events, m.writeLat, m.skewSeconds, m.advisoryLag, m.migrated}
	return m
}

func (m *metrics) coalesced(k subjects.Kind)  { m.coalescedC.WithLabelValues(string(k)).Inc() }
func (m *metrics) superseded(k subjects.Kind) { m.supersededC.WithLabelValues(string(k)).Inc() }

// replaced counts beats replaced by a newer beat of their key before they
// were written: coalesced after they were accepted, or superseded before
// they were admitted.
func (m *metrics) replaced() uint64 {
	var n float64
	for _, k := range kinds {
		n += value(m.coalescedC.WithLabelValues(string(k))) + value(m.supersededC.WithLabelValues(string(k)))
	}
	return uint64(n)
}
func (m *metrics) shed(k subjects.Kind, reason string) {
	m.shedC.WithLabelValues(string(k), reason).Inc()
}
func (m *metrics) writeDone(d time.Duration) { m.writeLat.Observe(d.Seconds()) }
func (m *metrics) writeFailed(k subjects.Kind, outcome string) {
	m.writeOut.WithLabelValues(string(k), outcome).Inc()
}
func (m *metrics) skew(ms int64) {
	if ms < 0 {
		ms = -ms
	}
	if ms < 0 { // MinInt64
		ms = 1 << 62
	}
	m.skewSeconds.Observe(float64(ms) / 1000)
}

// Stats is a snapshot of the queen's counters.
type Stats struct {
	// Accepted counts accepted beats by kind.
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
	// Backlog is the number of keys waiting to be written, lazy refreshes
	// aside; Refreshes the lazy refreshes waiting for their entry to fall due.
	Backlog, Refreshes int
	// Superseded counts, by kind, beats a newer beat of their key overtook
	// before they were admitted (neither accepted nor rejected).
	Superseded map[subjects.Kind]uint64
	// Dropped counts beats the subscription dropped; Coalesced beats replaced
	// before being written (superseded ones included); Lost writes given up.
	Dropped, Coalesced, Lost uint64
	// State is the queen's own state, as in its heartbeat.
	State wire.QueenState
	// Reason says why State is not ok.
	Reason string
}

// value returns the value of one counter or gauge series.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if m.Write(&d) != nil {
		return 0
	}
	if c := d.GetCounter(); c != nil {
		return c.GetValue()
	}
	return d.GetGauge().GetValue()
}

// collector exports the queen's vectors plus the gauges read at scrape time.
type collector struct{ q *Queen }

var (
	descSize     = prometheus.NewDesc("rbee_registry_entries", "Entries in the registry.", []string{"kind"}, nil)
	descLiveness = prometheus.NewDesc("rbee_registry_entries_by_liveness", "Worker and hive entries by liveness.", []string{"kind", "liveness"}, nil)
	descBacklog  = prometheus.NewDesc("rbee_queen_backlog", "Registry keys waiting to be written (lazy refreshes aside).", nil, nil)
	descLazy     = prometheus.NewDesc("rbee_queen_refreshes_waiting", "Worker entries whose newest beat changes nothing and waits to be written until the entry is due to expire (a lone queen).", nil, nil)
	descBuffered = prometheus.NewDesc("rbee_queen_beats_buffered", "Beats received and not yet decoded, in the subscription's buffer; at Config.PendingMsgs beats are dropped.", nil, nil)
	descLinger   = prometheus.NewDesc("rbee_queen_peers_lingering", "Other queens whose entries expired without a goodbye and that still count as members of the queue group (Config.PeerLinger): this queen holds every beat in reserve for them.", nil, nil)
	descInFlight = prometheus.NewDesc("rbee_queen_kv_writes_in_flight", "Registry writes sent and not yet acknowledged.", nil, nil)
	descLag      = prometheus.NewDesc("rbee_queen_write_lag_seconds", "How long the oldest waiting registry write has waited.", nil, nil)
	descLastOK   = prometheus.NewDesc("rbee_queen_last_write_timestamp_seconds", "Time of the last acknowledged registry write.", nil, nil)
	descState    = prometheus.NewDesc("rbee_queen_state", "1 for the queen's current state (ok, degraded, disrupted), 0 for the others.", []string{"state"}, nil)
	descBad      = prometheus.NewDesc("rbee_registry_undecodable_total", "Registry values the queen's mirror could not decode.", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSize, descLiveness, descBacklog, descLazy, descBuffered, descLinger, descInFlight, descLag, descLastOK, descState, descBad} {
		ch <- d
	}
	for _, x := range c.q.metrics.all {
		x.Describe(ch)
	}
	for _, x := range c.q.cfg.Collectors {
		x.Describe(ch)
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	q := c.q
	st := q.w.stats()
	ch <- prometheus.MustNewConstMetric(descBacklog, prometheus.GaugeValue, float64(st.Backlog))
	ch <- prometheus.MustNewConstMetric(descLazy, prometheus.GaugeValue, float64(st.Refreshes))
	ch <- prometheus.MustNewConstMetric(descBuffered, prometheus.GaugeValue, float64(q.buffered()))
	ch <- prometheus.MustNewConstMetric(descLinger, prometheus.GaugeValue, float64(q.reserve.lingerers(q, time.Now())))
	ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(st.InFlight))
	ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(st.LagMs)/1000)
	ch <- prometheus.MustNewConstMetric(descLastOK, prometheus.GaugeValue, float64(st.LastWriteMs)/1000)
	state, _ := q.state(st)
	for _, s := range []wire.QueenState{wire.QueenOK, wire.QueenDegraded, wire.QueenDisrupted} {
		v := 0.0
		if s == state {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, string(s))
	}
	if w := q.Registry(); w != nil {
		ch <- prometheus.MustNewConstMetric(descBad, prometheus.CounterValue, float64(w.Undecodable()))
		nw, nh := w.Sizes()
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(nw), "worker")
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(nh), "hive")
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(len(w.Queens())), "queen")
		wl, hl := w.Liveness()
		for kind, n := range map[string]map[wire.Liveness]int{"worker": wl, "hive": hl} {
			for _, l := range []wire.Liveness{wire.LivenessAlive, wire.LivenessDisconnected, wire.LivenessStalled} {
				ch <- prometheus.MustNewConstMetric(descLiveness, prometheus.GaugeValue, float64(n[l]), kind, string(l))
			}
		}
	}
	for _, x := range q.metrics.all {
		x.Collect(ch)
	}
	for _, x := range q.cfg.Collectors {
		x.Collect(ch)
	}
}
