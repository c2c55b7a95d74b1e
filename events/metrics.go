package events

import "github.com/prometheus/client_golang/prometheus"

var eventsDesc = prometheus.NewDesc("rbee_events_total",
	"Registry events handed to the event history, by result: published (stored), duplicate (already stored by "+
		"another queen), dropped (buffer full), failed (not stored after every retry).",
	[]string{"result"}, nil)

// Collector returns a Prometheus collector of the publisher's counts:
// rbee_events_total{result="published|duplicate|dropped|failed"}. It may be
// registered once per registry and collected concurrently.
func (p *Publisher) Collector() prometheus.Collector { return collector{p} }

type collector struct{ p *Publisher }

func (c collector) Describe(ch chan<- *prometheus.Desc) { ch <- eventsDesc }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.p.Stats()
	for _, m := range []struct {
		result string
		n      uint64
	}{{"published", s.Published}, {"duplicate", s.Duplicates}, {"dropped", s.Dropped}, {"failed", s.Failed}} {
		ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(m.n), m.result)
	}
}
