package harness

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metrics is one scrape of a Prometheus text endpoint.
type Metrics struct {
	// Samples holds every sample by its full name with labels, as written
	// (`rbee_registry_events_total{event="expired",kind="worker"}`).
	Samples map[string]float64
	// ByName sums the samples of each metric name over its labels.
	ByName map[string]float64
}

// Scrape reads http://addr/metrics within 5 s; it returns the HTTP status
// as an error when it is not 200.
func Scrape(addr string) (Metrics, error) { return ScrapeWithin(addr, 5*time.Second) }

// ScrapeWithin is Scrape with its own time limit.
func ScrapeWithin(addr string, limit time.Duration) (Metrics, error) {
	m := Metrics{Samples: map[string]float64{}, ByName: map[string]float64{}}
	c := http.Client{Timeout: limit}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("metrics: %s", resp.Status)
	}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		l := s.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		full := l[:i]
		m.Samples[full] = v
		name := full
		if j := strings.IndexByte(full, '{'); j >= 0 {
			name = full[:j]
		}
		m.ByName[name] += v
	}
	return m, s.Err()
}

// Sum adds the samples whose name satisfies nameOK and whose labels contain
// every one of labels (`kind="worker"`).
func (m Metrics) Sum(nameOK func(string) bool, labels ...string) float64 {
	var t float64
	for full, v := range m.Samples {
		name, lab := full, ""
		if j := strings.IndexByte(full, '{'); j >= 0 {
			name, lab = full[:j], full[j:]
		}
		if !nameOK(name) {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(lab, l) {
				ok = false
				break
			}
		}
		if ok {
			t += v
		}
	}
	return t
}

// Named returns a name matcher for Sum: exactly name.
func Named(name string) func(string) bool { return func(n string) bool { return n == name } }

// Healthz returns the status code of GET http://addr/healthz and the body's
// first non-empty line.
func Healthz(addr string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	line := ""
	for s.Scan() && line == "" {
		line = strings.TrimSpace(s.Text())
	}
	return resp.StatusCode, line, nil
}
