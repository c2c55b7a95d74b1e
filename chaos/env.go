package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/rbee/heartbeat/internal/harness"
)

// world is what every case shares: the rbee binary, the run's options and
// the queen's TTL flags, found from the binary's own help.
type world struct {
	bin     string
	self    string // this program, re-executed as the load generator
	tmp     string
	opt     options
	missed  bool // the queen takes --missed (per-entry TTL) instead of --worker-ttl
	log     func(format string, args ...any)
	rssKill int64
	// capacity is what the queen can write, writes/s: -capacity, or measured by the capacity case.
	capacity float64
}

// Interval and TTL of every case: a TTL of 3 beats.
const (
	interval = time.Second
	missed   = 3
	ttl      = missed * interval
)

func newWorld(opt options, log func(string, ...any)) (*world, error) {
	tmp, err := os.MkdirTemp("", "rbee-chaos-")
	if err != nil {
		return nil, err
	}
	bin, err := harness.BuildRbee(tmp)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	help, _ := exec.Command(bin, "queen", "-h").CombinedOutput()
	w := &world{bin: bin, self: self, tmp: tmp, opt: opt, log: log, rssKill: 3 << 30,
		missed: strings.Contains(string(help), "-missed"), capacity: opt.capacity}
	return w, nil
}

func (w *world) close() { _ = os.RemoveAll(w.tmp) }

// dir returns a new folder under the run's temporary folder.
func (w *world) dir(name string) string {
	d, _ := os.MkdirTemp(w.tmp, name+"-")
	return d
}

func (w *world) ttlFlags() []string {
	if w.missed {
		return []string{"--missed", strconv.Itoa(missed)}
	}
	s := ttl.String()
	return []string{"--worker-ttl", s, "--hive-ttl", s}
}

// queen is one `rbee queen` child.
type queen struct {
	*harness.Proc
	args     []string
	natsAddr string // empty when it uses another queen's broker
	httpAddr string
	rss      *harness.RSSWatch
}

// Patterns counted in a queen's log.
var queenPatterns = []string{"slow consumer", "level=error", "level=warn", "disconnected", "reconnected"}

// startQueen starts a queen with an embedded broker on natsPort (0: use
// natsURL instead) and its HTTP API on httpPort, and waits until its
// /healthz answers and its broker takes connections.
func (w *world) startQueen(label string, natsPort int, natsURL string, httpPort int, data string, extra ...string) (*queen, error) {
	q := &queen{httpAddr: fmt.Sprintf("127.0.0.1:%d", httpPort)}
	q.args = []string{"queen", "--http", q.httpAddr}
	if natsPort != 0 {
		q.natsAddr = fmt.Sprintf("127.0.0.1:%d", natsPort)
		q.args = append(q.args, "--listen", q.natsAddr, "--data", data)
	} else {
		q.args = append(q.args, "--nats-url", natsURL)
	}
	q.args = append(q.args, w.ttlFlags()...)
	q.args = append(q.args, extra...)
	return q, w.launch(label, q)
}

// launch starts (or restarts) q's process with its arguments.
func (w *world) launch(label string, q *queen) error {
	p, err := harness.Start(label, w.bin, q.args, harness.Options{Patterns: queenPatterns})
	if err != nil {
		return err
	}
	q.Proc = p
	q.rss = harness.WatchRSS(p, w.rssKill)
	err = harness.WaitFor(60*time.Second, label+" /healthz", func() error {
		if p.Exited() {
			return fmt.Errorf("exited:\n%s", p.Output())
		}
		code, _, err := harness.Healthz(q.httpAddr)
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	if err != nil {
		p.Kill()
	}
	return err
}

// url is the queen's broker URL.
func (q *queen) url() string { return "nats://" + q.natsAddr }

// fleet starts `rbee worker --simulate n` beating every interval.
func (w *world) fleet(label, url, hive string, n int) (*harness.Proc, error) {
	return harness.Start(label, w.bin, []string{"worker", "--nats-url", url, "--hive-id", hive, "--worker-id", "w",
		"--simulate", strconv.Itoa(n), "--interval", interval.String()}, harness.Options{})
}

// loadProc is a running load generator.
type loadProc struct {
	*harness.Proc
}

// load starts the load generator with args.
func (w *world) load(url string, args ...string) (*loadProc, error) {
	p, err := harness.Start("load", w.self, append([]string{"-role", "load", "-url", url}, args...), harness.Options{})
	if err != nil {
		return nil, err
	}
	return &loadProc{p}, nil
}

// reports returns the JSON lines the load generator printed so far.
func (l *loadProc) reports() []loadReport {
	var out []loadReport
	s := bufio.NewScanner(strings.NewReader(l.Output()))
	for s.Scan() {
		var r loadReport
		if json.Unmarshal(s.Bytes(), &r) == nil && (r.Step != 0 || r.Final) {
			out = append(out, r)
		}
	}
	return out
}

// wait waits up to timeout for the load generator to end and returns its final report.
func (l *loadProc) wait(timeout time.Duration) (loadReport, error) {
	select {
	case <-l.Done():
	case <-time.After(timeout):
		l.Kill()
		return loadReport{}, fmt.Errorf("load generator did not end within %s:\n%s", timeout, l.Output())
	}
	for _, r := range l.reports() {
		if r.Final {
			return r, nil
		}
	}
	return loadReport{}, fmt.Errorf("load generator printed no report:\n%s", l.Output())
}

// prefixOf returns a key matcher for one hive.
func prefixOf(hive string) func(string) bool {
	p := hive + "."
	return func(k string) bool { return strings.HasPrefix(k, p) }
}

// waitPresent waits until n keys of hive are present in the registry.
func waitPresent(o *observer, hive string, n int, timeout time.Duration) error {
	return harness.WaitFor(timeout, fmt.Sprintf("%d workers of %s registered", n, hive), func() error {
		if p, _ := o.livePresent(prefixOf(hive), time.Time{}); p < n {
			return fmt.Errorf("%d present", p)
		}
		return nil
	})
}

// waitFresh waits until every one of n keys of hive was written after since,
// and returns when that happened.
func waitFresh(o *observer, hive string, n int, since time.Time, timeout time.Duration) (time.Duration, error) {
	err := harness.WaitFor(timeout, fmt.Sprintf("%d workers of %s written again", n, hive), func() error {
		if _, f := o.livePresent(prefixOf(hive), since); f < n {
			return fmt.Errorf("%d fresh", f)
		}
		return nil
	})
	return time.Since(since), err
}

// pause waits d: the fault window under test.
func pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	<-t.C
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func kib(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10)) }

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
