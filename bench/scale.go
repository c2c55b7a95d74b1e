package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/harness"
	"github.com/rbee/heartbeat/subjects"
)

// The scale phase runs the system as an operator does, each part in its own
// process: nats-server with JetStream (a temporary store on loopback), `rbee
// queen --nats-url` with its defaults, and the load generator
// (scaleload.go). For each fleet size it holds the fleet at the real
// intervals for a window after all have joined and reads, over that window,
// what each process costs and what the registry shows.

// scaleOptions are the scale phase's knobs.
type scaleOptions struct {
	sizes    []int
	interval time.Duration // workers' interval; hives beat at half of it
	hold     int           // the measured window, in workers' intervals
	joinRate float64       // most workers joining per second
	perHive  int
	changes  int // workers whose status changes every second beat (lag sample)
	kills    int // workers killed once all have joined (expiry sample)
	cluster  int // workers in the 3-server cluster run; 0: none
	plot     string
	rssLimit int64  // a queen or broker whose RSS passes this is killed and the run fails; 0: no limit
	perf     string // folder for perf recordings of the queens and brokers over the window; empty: none
	heap     string // folder for the queens' heap profiles at the window's end and CPU profiles over its first 30 s; empty: none
	self     string // this program, re-executed as the load generator
	logf     func(format string, args ...any)
}

// missed is the queen's default: an entry expires after 3 of its intervals.
const missed = 3

// ttl returns the TTL the queen gives an entry beating every interval:
// missed intervals, rounded up to whole seconds.
func ttl(interval time.Duration) time.Duration {
	return time.Duration(math.Ceil((missed * interval).Seconds())) * time.Second
}

// scaleResult is everything the scale phase measured.
type scaleResult struct {
	Date      string         `json:"date"`
	Command   string         `json:"flags"`
	Machine   string         `json:"machine"`
	WallTime  string         `json:"wall_time"`
	LoadStart string         `json:"load_average_start"`
	LoadEnd   string         `json:"load_average_end"`
	Settings  map[string]any `json:"settings"`
	Rows      []scaleRow     `json:"sizes"`
	Cluster   *scaleRow      `json:"cluster,omitempty"`
}

// scaleRow is one fleet size held for the window.
type scaleRow struct {
	Workers      int     `json:"workers"`
	Hives        int     `json:"hives"`
	Servers      int     `json:"servers"`
	Queens       int     `json:"queens"`
	IntervalS    float64 `json:"worker_interval_s"`
	HiveInterval float64 `json:"hive_interval_s"`
	TTLs         float64 `json:"worker_ttl_s"`
	JoinS        float64 `json:"join_s"`
	JoinRate     float64 `json:"join_rate_per_s"`
	WindowS      float64 `json:"window_s"`
	WorkerBytes  int     `json:"worker_beat_bytes"`
	HiveBytes    int     `json:"hive_beat_bytes"`

	// CPU in cores over the window; memory in bytes, RSS at its end, peak
	// (VmHWM) over the process's life; each summed over the processes.
	QueenCores  float64       `json:"queen_cores"`
	BrokerCores float64       `json:"broker_cores"`
	TotalCores  float64       `json:"total_cores"`
	QueenRSS    int64         `json:"queen_rss_bytes"`
	QueenPeak   int64         `json:"queen_peak_rss_bytes"`
	BrokerRSS   int64         `json:"broker_rss_bytes"`
	BrokerPeak  int64         `json:"broker_peak_rss_bytes"`
	Procs       []procFigs    `json:"processes"`
	Load1       [2]float64    `json:"load_average_1m_window"`
	Generator   genFigures    `json:"generator"`
	Beats       float64       `json:"worker_beats_per_s"`
	HiveBeats   float64       `json:"hive_beats_per_s"`
	Writes      float64       `json:"worker_kv_writes_per_s"`
	HiveWrites  float64       `json:"hive_kv_writes_per_s"`
	ChangeLag   percentile    `json:"change_beat_to_kv"`
	Changes     [2]int        `json:"changes_sent_seen"`
	ViaLater    int           `json:"changes_written_with_a_later_beat"`
	RefreshAge  percentile    `json:"refresh_stored_beat_age"`
	Refreshes   int           `json:"sample_refresh_writes"`
	Lateness    percentile    `json:"expiry_beyond_ttl"`
	Killed      [2]int        `json:"killed_expired"`
	False       int           `json:"false_expiries"`
	HiveExpired int           `json:"hive_expiries"`
	SampleFalse int           `json:"sample_false_expiries"`
	Live        [2]int        `json:"live_workers_want_got"`
	Counters    []counterFig  `json:"queen_counters"`
	Profiles    []perfProfile `json:"perf_profiles,omitempty"`
	Problems    []string      `json:"problems,omitempty"`
}

// procFigs is one process over the window.
type procFigs struct {
	Name   string  `json:"name"`
	Cores  float64 `json:"cores"`
	RSS    int64   `json:"rss_bytes"`
	Peak   int64   `json:"peak_rss_bytes"`
	Writes float64 `json:"kv_writes_per_s,omitempty"` // a queen's acknowledged writes
	// A queen's Go heap at the window's end (its /metrics): the spans in
	// use, and the size at which the next collection starts.
	HeapInuse int64 `json:"heap_inuse_bytes,omitempty"`
	NextGC    int64 `json:"next_gc_bytes,omitempty"`
}

// genFigures is what the load generator says of itself.
type genFigures struct {
	BehindMs float64 `json:"most_behind_timetable_ms"`
	Errors   uint64  `json:"publish_errors"`
	// Cores is the generator's own CPU over the window: the machine's
	// cores it took from the queen and the broker.
	Cores float64 `json:"cores"`
}

// counterFig is one of the queen's counters over the whole run.
type counterFig struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Bad   bool    `json:"must_be_zero,omitempty"`
}

// queenCounters are the counters the report shows: what was shed, dropped
// or lost must stay 0.
var queenCounters = []struct {
	name, label, show string
	bad               bool
}{
	{"rbee_queen_beats_accepted_total", "", "beats accepted", false},
	{"rbee_queen_kv_write_seconds_count", "", "KV writes acknowledged", false},
	{"rbee_queen_beats_coalesced_total", "", "beats coalesced", false},
	{"rbee_queen_beats_superseded_total", "", "beats superseded before admitting", false},
	{"rbee_queen_beats_rejected_total", "", "beats rejected", true},
	{"rbee_queen_beats_shed_total", "", "beats shed", true},
	{"rbee_queen_beats_dropped_total", "", "beats dropped (slow consumer)", true},
	{"rbee_queen_reserve_dropped_total", "", "reserve dropped", true},
	{"rbee_queen_kv_write_failures_total", `outcome="lost"`, "writes lost", true},
	{"rbee_queen_kv_write_failures_total", `outcome="retried"`, "writes retried", false},
	{"rbee_queen_kv_write_failures_total", `outcome="reread"`, "writes re-read", false},
}

// scaleEnv is what every size shares: the binaries and a temporary folder.
type scaleEnv struct {
	o               scaleOptions
	tmp, rbee, nats string
}

func newScaleEnv(o scaleOptions) (*scaleEnv, error) {
	tmp, err := os.MkdirTemp("", "rbee-scale-")
	if err != nil {
		return nil, err
	}
	e := &scaleEnv{o: o, tmp: tmp}
	if e.rbee, err = harness.BuildRbee(tmp); err == nil {
		e.nats, err = harness.BuildNATSServer(tmp)
	}
	if err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *scaleEnv) close() { _ = os.RemoveAll(e.tmp) }

// measureScale runs every size of o, then the cluster run if asked; when
// ctx ends it stops what runs and returns ctx's error.
func measureScale(ctx context.Context, o scaleOptions) (scaleResult, error) {
	r := scaleResult{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), Command: strings.Join(os.Args[1:], " "),
		Machine: describeMachine(), LoadStart: loadAvg(), Settings: o.settings()}
	start := time.Now()
	e, err := newScaleEnv(o)
	if err != nil {
		return r, err
	}
	defer e.close()
	for _, n := range o.sizes {
		row, err := e.measure(ctx, n, 1)
		if err != nil {
			return r, fmt.Errorf("%d workers: %w", n, err)
		}
		r.Rows = append(r.Rows, row)
	}
	slices.SortFunc(r.Rows, func(a, b scaleRow) int { return cmp.Compare(a.Workers, b.Workers) })
	if o.cluster > 0 {
		row, err := e.measure(ctx, o.cluster, 3)
		if err != nil {
			return r, fmt.Errorf("cluster, %d workers: %w", o.cluster, err)
		}
		r.Cluster = &row
	}
	r.WallTime, r.LoadEnd = time.Since(start).Round(time.Second).String(), loadAvg()
	return r, nil
}

func (o scaleOptions) settings() map[string]any {
	return map[string]any{"sizes": o.sizes, "worker_interval": o.interval.String(), "hive_interval": (o.interval / 2).String(),
		"hold_intervals": o.hold, "join_rate": o.joinRate, "workers_per_hive": o.perHive, "change_sample": o.changes,
		"kill_sample": o.kills, "missed": missed, "cluster_workers": o.cluster}
}

// scaleSystem is one run's brokers and queens.
type scaleSystem struct {
	rss     []*harness.RSSWatch
	brokers []*harness.Proc
	urls    []string
	queens  []*harness.Proc
	https   []string
	pprofs  []string // the queens' --pprof addresses
	bprofs  []string // the brokers' --profile addresses
}

// stop ends the queens, then the brokers, each within a bound.
func (s *scaleSystem) stop() {
	var wg sync.WaitGroup
	for _, q := range s.queens {
		wg.Go(func() { q.Stop(20 * time.Second) })
	}
	wg.Wait()
	for _, b := range s.brokers {
		wg.Go(func() { b.Stop(10 * time.Second) })
	}
	wg.Wait()
	for _, w := range s.rss {
		w.Result()
	}
}

// exited returns an error naming a process of the system that has ended.
func (s *scaleSystem) exited() error {
	for i, p := range append(append([]*harness.Proc{}, s.brokers...), s.queens...) {
		if p.Exited() {
			if s.rss[i].Killed() {
				return fmt.Errorf("%s killed: its RSS passed -scale-rss-limit-mib", p.Name)
			}
			return fmt.Errorf("%s exited (code %d):\n%s", p.Name, p.ExitCode(), p.Output())
		}
	}
	return nil
}

// queenPatterns are counted in the queens' logs.
// The server runs without a system account, as a plain `nats-server -js`
// does: the queen says once that crash detection falls back to the TTL.
var queenPatterns = []string{"level=warn", "level=error", "no connection advisories"}

// start starts servers nats-servers (a cluster when more than one) and one
// queen on each, with replicas as many as servers.
func (e *scaleEnv) start(dir string, servers int) (*scaleSystem, error) {
	s := &scaleSystem{}
	ports, err := harness.FreePorts(5 * servers)
	if err != nil {
		return nil, err
	}
	var routes []string
	for i := range servers {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[servers+i]))
	}
	for i := range servers {
		name := fmt.Sprintf("nats-server-%d", i+1)
		args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(ports[i]), "-js", "-sd", filepath.Join(dir, name), "-n", name}
		if servers > 1 {
			args = append(args, "--cluster_name", "rbee-bench", "--cluster", routes[i], "--routes", strings.Join(routes, ","))
		}
		if e.o.heap != "" {
			args = append(args, "--profile", strconv.Itoa(ports[4*servers+i]))
			s.bprofs = append(s.bprofs, fmt.Sprintf("127.0.0.1:%d", ports[4*servers+i]))
		}
		p, err := harness.Start(name, e.nats, args, harness.Options{})
		if err != nil {
			s.stop()
			return nil, err
		}
		s.brokers, s.urls = append(s.brokers, p), append(s.urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
		s.rss = append(s.rss, harness.WatchRSS(p, e.o.rssLimit))
	}
	if err := harness.WaitFor(60*time.Second, "JetStream ready", func() error { return jetStreamReady(s) }); err != nil {
		s.stop()
		return nil, err
	}
	for i := range servers {
		name := fmt.Sprintf("queen-%d", i+1)
		addr := fmt.Sprintf("127.0.0.1:%d", ports[2*servers+i])
		args := []string{"queen", "--nats-url", s.urls[i], "--http", addr, "--queen-id", "bench-" + name,
			"--replicas", strconv.Itoa(servers)}
		if e.o.heap != "" {
			paddr := fmt.Sprintf("127.0.0.1:%d", ports[3*servers+i])
			args = append(args, "--pprof", paddr)
			s.pprofs = append(s.pprofs, paddr)
		}
		p, err := harness.Start(name, e.rbee, args, harness.Options{Patterns: queenPatterns})
		if err != nil {
			s.stop()
			return nil, err
		}
		s.queens, s.https = append(s.queens, p), append(s.https, addr)
		s.rss = append(s.rss, harness.WatchRSS(p, e.o.rssLimit))
		err = harness.WaitFor(60*time.Second, name+" /healthz", func() error {
			if p.Exited() {
				return fmt.Errorf("exited:\n%s", p.Output())
			}
			code, line, err := harness.Healthz(addr)
			if err == nil && code != 200 {
				err = fmt.Errorf("status %d: %s", code, line)
			}
			return err
		})
		if err != nil {
			s.stop()
			return nil, err
		}
	}
	return s, nil
}

// jetStreamReady checks that every server answers JetStream requests.
func jetStreamReady(s *scaleSystem) error {
	if err := s.exited(); err != nil {
		return err
	}
	for _, u := range s.urls {
		nc, err := nats.Connect(u, nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		js, err := jetstream.New(nc)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = js.AccountInfo(ctx)
			cancel()
		}
		nc.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", u, err)
		}
	}
	return nil
}

// snap is one reading of every process and of the buckets.
type snap struct {
	at             time.Time
	cpu            []time.Duration // brokers, then queens
	workers, hives uint64          // last sequence of each bucket's stream
	metrics        []harness.Metrics
	load1          float64
}

func (s *scaleSystem) read(js jetstream.JetStream) (snap, error) {
	sn := snap{at: time.Now(), load1: load1()}
	var errs []error
	for _, p := range append(append([]*harness.Proc{}, s.brokers...), s.queens...) {
		c, err := harness.CPUTime(p.Pid())
		sn.cpu, errs = append(sn.cpu, c), append(errs, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range []struct {
		name string
		seq  *uint64
	}{{subjects.Default().WorkersBucket(), &sn.workers}, {subjects.Default().HivesBucket(), &sn.hives}} {
		st, err := js.Stream(ctx, "KV_"+b.name)
		if err == nil {
			*b.seq = st.CachedInfo().State.LastSeq
		}
		errs = append(errs, err)
	}
	for _, a := range s.https {
		// A queen with a million entries on a full machine may take many
		// seconds to answer: slow is a figure of the run, not its end.
		m, err := harness.ScrapeWithin(a, scrapeLimit)
		sn.metrics, errs = append(sn.metrics, m), append(errs, err)
	}
	return sn, errors.Join(errs...)
}

// scrapeLimit is how long a queen's /metrics may take to answer.
const scrapeLimit = time.Minute

// counter sums a counter over the queens.
func (sn snap) counter(name string, labels ...string) float64 {
	var v float64
	for _, m := range sn.metrics {
		v += m.Sum(harness.Named(name), labels...)
	}
	return v
}

// max returns the largest value of name over the queens.
func (sn snap) max(name string, labels ...string) float64 {
	var v float64
	for _, m := range sn.metrics {
		v = max(v, m.Sum(harness.Named(name), labels...))
	}
	return v
}

// genLines collects the load generator's events.
type genLines struct {
	mu     sync.Mutex
	events map[string]loadEvent
	bad    []string
}

func (g *genLines) add(line string) {
	var ev loadEvent
	g.mu.Lock()
	defer g.mu.Unlock()
	if json.Unmarshal([]byte(line), &ev) != nil || ev.Event == "" {
		if len(g.bad) < 20 {
			g.bad = append(g.bad, line)
		}
		return
	}
	g.events[ev.Event] = ev
}

func (g *genLines) get(name string) (loadEvent, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ev, ok := g.events[name]
	return ev, ok
}

// measure runs n workers against servers brokers and as many queens.
func (e *scaleEnv) measure(ctx context.Context, n, servers int) (scaleRow, error) {
	o := e.o
	shape, err := newScaleShape(n, o.perHive, o.interval, o.interval/2, o.joinRate)
	if err != nil {
		return scaleRow{}, err
	}
	change, kill, err := shape.samples(o.changes, o.kills)
	if err != nil {
		return scaleRow{}, err
	}
	hold := time.Duration(o.hold) * o.interval
	r := scaleRow{Workers: n, Hives: shape.Hives, Servers: servers, Queens: servers, IntervalS: o.interval.Seconds(),
		HiveInterval: shape.HiveInterval.Seconds(), TTLs: ttl(o.interval).Seconds(), JoinS: shape.joinTime().Seconds()}
	o.logf("scale %d workers, %d hives, %d server(s): join %s, hold %s (load %s)", n, shape.Hives, servers, shape.joinTime(), hold, loadAvg())
	dir, err := os.MkdirTemp(e.tmp, fmt.Sprintf("run-%d-", n))
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	sys, err := e.start(dir, servers)
	if err != nil {
		return r, err
	}
	defer sys.stop()
	obsURL := sys.urls[len(sys.urls)-1]
	var sample []string
	for _, i := range append(append([]int{}, change...), kill...) {
		sample = append(sample, shape.key(i))
	}
	watch, err := watchSamples(obsURL, sample)
	if err != nil {
		return r, err
	}
	defer watch.close()
	nc, err := nats.Connect(obsURL, nats.Name("bench-scale-reader"))
	if err != nil {
		return r, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return r, err
	}
	s0, err := sys.read(js)
	if err != nil {
		return r, err
	}
	lines := &genLines{events: map[string]loadEvent{}}
	args := []string{"-role", "scale-load", "-url", sys.urls[0],
		"-workers", strconv.Itoa(n), "-per-hive", strconv.Itoa(o.perHive), "-interval", o.interval.String(),
		"-hive-interval", shape.HiveInterval.String(), "-join-rate", strconv.FormatFloat(o.joinRate, 'f', -1, 64),
		"-settle", o.interval.String(), "-hold", hold.String(), "-changes", strconv.Itoa(o.changes), "-kills", strconv.Itoa(o.kills),
		"-duration", (shape.joinTime() + o.interval + hold + ttl(o.interval) + 3*time.Minute).String()}
	gen, err := harness.Start("load generator", o.self, args, harness.Options{OnLine: lines.add})
	if err != nil {
		return r, err
	}
	defer gen.Stop(10 * time.Second)
	alive := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if gen.Exited() {
			return fmt.Errorf("load generator exited (code %d):\n%s", gen.ExitCode(), gen.Output())
		}
		return sys.exited()
	}
	await := func(event string, timeout time.Duration) (loadEvent, error) {
		var ev loadEvent
		err := harness.WaitFor(timeout, "load generator: "+event, func() error {
			var ok bool
			if ev, ok = lines.get(event); ok {
				return nil
			}
			if err := alive(); err != nil {
				return err
			}
			return errors.New("not yet")
		})
		return ev, err
	}
	ready, err := await("ready", time.Minute)
	if err != nil {
		return r, err
	}
	r.WorkerBytes, r.HiveBytes, r.JoinRate = ready.WorkerBytes, ready.HiveBytes, ready.JoinRate
	if _, err := await("joined", shape.joinTime()+time.Minute); err != nil {
		return r, err
	}
	// The window starts one interval later, once each worker's first
	// refresh is due, so that its rates are those of the steady state.
	o.logf("scale %d workers: all joined; settling %s", n, o.interval)
	if _, err := await("start", o.interval+time.Minute); err != nil {
		return r, err
	}
	a, err := sys.read(js)
	if err != nil {
		return r, cmp.Or(sys.exited(), err) // a process ended: say why
	}
	genCPU, _ := harness.CPUTime(gen.Pid())
	o.logf("scale %d workers: holding %s", n, hold)
	var perfs []*perfRun
	if o.perf != "" {
		for _, p := range append(append([]*harness.Proc{}, sys.brokers...), sys.queens...) {
			pr, err := startPerf(p.Name, p.Pid(), filepath.Join(o.perf, fmt.Sprintf("%s-%s-%s.perf.data", sizeName(n), time.Now().Format("150405"), p.Name)))
			if err != nil {
				return r, err
			}
			defer pr.p.Kill()
			perfs = append(perfs, pr)
		}
	}
	cpuProfiles := make(chan error, len(sys.pprofs)+len(sys.bprofs))
	profiled := append(append([]*harness.Proc{}, sys.queens[:len(sys.pprofs)]...), sys.brokers[:len(sys.bprofs)]...)
	for i, addr := range append(append([]string{}, sys.pprofs...), sys.bprofs...) {
		path := filepath.Join(o.heap, fmt.Sprintf("%s-%s.cpu.pb.gz", sizeName(n), profiled[i].Name))
		secs := int(min(hold, 30*time.Second).Seconds())
		go func() {
			cpuProfiles <- saveProfile(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), path)
		}()
	}
	// The window is a measurement, not a wait for a condition: the fleet is
	// held for it whatever happens, and any process ending cuts it short.
	if err := harness.WaitFor(hold+time.Minute, "the window", func() error {
		if err := alive(); err != nil {
			return fmt.Errorf("%w: %w", errFatal, err)
		}
		if time.Since(a.at) < hold {
			return errors.New("holding")
		}
		return nil
	}); err != nil {
		return r, err
	}
	b, err := sys.read(js)
	if err != nil {
		return r, cmp.Or(sys.exited(), err)
	}
	if c, err := harness.CPUTime(gen.Pid()); err == nil {
		r.Generator.Cores = (c - genCPU).Seconds() / b.at.Sub(a.at).Seconds()
	}
	for range profiled {
		if err := <-cpuProfiles; err != nil {
			return r, err
		}
	}
	for i, addr := range sys.pprofs {
		path := filepath.Join(o.heap, fmt.Sprintf("%s-%s.heap.pb.gz", sizeName(n), sys.queens[i].Name))
		if err := saveProfile("http://"+addr+"/debug/pprof/heap?gc=1", path); err != nil {
			return r, err
		}
		o.logf("scale %d workers: heap profile of %s in %s (go tool pprof -sample_index=inuse_space %s)", n, sys.queens[i].Name, path, path)
	}
	for _, pr := range perfs {
		prof, err := pr.stop()
		if err != nil {
			return r, err
		}
		r.Profiles = append(r.Profiles, prof)
	}
	for i, p := range append(append([]*harness.Proc{}, sys.brokers...), sys.queens...) {
		pf := procFigs{Name: p.Name, Cores: (b.cpu[i] - a.cpu[i]).Seconds() / b.at.Sub(a.at).Seconds(),
			RSS: harness.Status(p.Pid(), "VmRSS:"), Peak: harness.Status(p.Pid(), "VmHWM:")}
		if q := i - len(sys.brokers); q >= 0 {
			pf.HeapInuse = int64(b.metrics[q].Sum(harness.Named("go_memstats_heap_inuse_bytes")))
			pf.NextGC = int64(b.metrics[q].Sum(harness.Named("go_memstats_next_gc_bytes")))
			pf.Writes = (b.metrics[q].Sum(harness.Named("rbee_queen_kv_write_seconds_count")) -
				a.metrics[q].Sum(harness.Named("rbee_queen_kv_write_seconds_count"))) / b.at.Sub(a.at).Seconds()
			r.QueenCores, r.QueenRSS, r.QueenPeak = r.QueenCores+pf.Cores, r.QueenRSS+pf.RSS, r.QueenPeak+pf.Peak
		} else {
			r.BrokerCores, r.BrokerRSS, r.BrokerPeak = r.BrokerCores+pf.Cores, r.BrokerRSS+pf.RSS, r.BrokerPeak+pf.Peak
		}
		r.Procs = append(r.Procs, pf)
	}
	r.TotalCores = r.QueenCores + r.BrokerCores
	win := b.at.Sub(a.at).Seconds()
	r.WindowS, r.Load1 = win, [2]float64{a.load1, b.load1}
	r.Writes, r.HiveWrites = float64(b.workers-a.workers)/win, float64(b.hives-a.hives)/win
	window, err := await("window", time.Minute)
	if err != nil {
		return r, err
	}
	r.Beats, r.HiveBeats = float64(window.WorkerBeats)/hold.Seconds(), float64(window.HiveBeats)/hold.Seconds()
	r.Changes[0] = int(window.Changes)
	killed, err := await("killed", time.Second)
	if err != nil {
		return r, err
	}
	last := map[string]time.Time{}
	var latest time.Time
	var killedKeys []string
	for k, ms := range killed.LastBeatMs {
		last[k] = time.UnixMilli(ms)
		killedKeys = append(killedKeys, k)
		if last[k].After(latest) {
			latest = last[k]
		}
	}
	// Every killed key expires one TTL after its last beat; wait a bound
	// beyond that for all of their markers.
	expiryBound := time.Until(latest.Add(ttl(o.interval) + 30*time.Second))
	if err := harness.WaitFor(max(expiryBound, time.Second), "killed workers expired", func() error {
		if err := alive(); err != nil {
			return fmt.Errorf("%w: %w", errFatal, err)
		}
		if got := watch.expired(killedKeys, latest); got < len(killedKeys) {
			return fmt.Errorf("%d of %d expired", got, len(killedKeys))
		}
		return nil
	}); err != nil {
		if errors.Is(err, errFatal) {
			return r, err
		}
		r.Problems = append(r.Problems, err.Error())
	}
	// The registry ends with every worker but the killed ones.
	want := n - len(killedKeys)
	var end snap
	err = harness.WaitFor(15*time.Second, "registry entries", func() error {
		var err error
		if end, err = sys.read(js); err != nil {
			return err
		}
		if got := int(end.metrics[0].Sum(harness.Named("rbee_registry_entries"), `kind="worker"`)); got != want {
			return fmt.Errorf("%d worker entries, want %d", got, want)
		}
		return nil
	})
	if len(end.metrics) == 0 {
		return r, err
	}
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
	}
	r.Live = [2]int{want, int(end.metrics[0].Sum(harness.Named("rbee_registry_entries"), `kind="worker"`))}
	gen.Stop(10 * time.Second)
	if final, ok := lines.get("final"); ok {
		r.Generator.BehindMs, r.Generator.Errors = final.BehindMs, final.Errors
	} else {
		r.Problems = append(r.Problems, "the load generator printed no final line")
	}
	e.judge(&r, s0, end, watch, change, shape, last, ready, hold)
	for i, q := range sys.queens {
		w, _ := q.Count("level=warn")
		adv, _ := q.Count("no connection advisories")
		w -= adv
		er, _ := q.Count("level=error")
		if w+er > 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("%s logged %d warnings and %d errors; the last lines:\n%s", sys.queens[i].Name, w, er, lastLines(q.Output(), 5)))
		}
	}
	o.logf("scale %d workers: queen %.3f cores, broker %.3f cores, %.0f writes/s, change lag p99 %.0f ms, expiry p99 %.0f ms beyond the TTL, %d false expiries",
		n, r.QueenCores, r.BrokerCores, r.Writes, r.ChangeLag.P99ms, r.Lateness.P99ms, r.False)
	return r, nil
}

// errFatal marks a failure that ends a run at once.
var errFatal = errors.New("fatal")

// judge fills in the registry's figures: lags and expiries from the sample,
// counters from the queens' /metrics over the whole run.
func (e *scaleEnv) judge(r *scaleRow, s0, end snap, watch *sampleWatch, change []int, shape scaleShape,
	last map[string]time.Time, ready loadEvent, hold time.Duration) {
	ops, bad, first := watch.snapshot()
	if bad > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d sampled values did not decode: %v", bad, first))
	}
	var changeKeys []string
	for _, i := range change {
		changeKeys = append(changeKeys, shape.key(i))
	}
	from := time.UnixMilli(ready.StartMs).Add(shape.joinTime() + shape.Interval) // the window starts one interval after all joined
	f := readSamples(ops, changeKeys, last, shape.Interval, ttl(shape.Interval), from, from.Add(hold))
	r.ChangeLag, r.RefreshAge, r.Lateness = percentiles(f.changeLag), percentiles(f.refreshAge), percentiles(f.lateness)
	r.Changes[1], r.ViaLater, r.Refreshes = f.changesSeen, f.viaLater, f.refreshes
	r.Killed, r.SampleFalse = [2]int{len(last), f.killedExpired}, f.falseExpiries
	expired := end.counter("rbee_registry_events_total", `kind="worker"`, `event="expired"`) -
		s0.counter("rbee_registry_events_total", `kind="worker"`, `event="expired"`)
	// Every queen counts every expiry it sees in the bucket: one queen's count is the bucket's.
	expired /= float64(len(end.metrics))
	r.False = int(expired) - f.killedExpired
	r.HiveExpired = int((end.counter("rbee_registry_events_total", `kind="hive"`, `event="expired"`) -
		s0.counter("rbee_registry_events_total", `kind="hive"`, `event="expired"`)) / float64(len(end.metrics)))
	for _, c := range queenCounters {
		var labels []string
		if c.label != "" {
			labels = append(labels, c.label)
		}
		v := end.counter(c.name, labels...) - s0.counter(c.name, labels...)
		r.Counters = append(r.Counters, counterFig{Name: c.show, Value: v, Bad: c.bad})
		if c.bad && v > 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %.0f", c.show, v))
		}
	}
	// How far behind the queens were as the window closed: beats not yet
	// decoded, and the registry writes' wait.
	r.Counters = append(r.Counters,
		counterFig{Name: "beats buffered at the window's end", Value: end.counter("rbee_queen_beats_buffered")},
		counterFig{Name: "write lag at the window's end (ms, the longest of the queens')", Value: 1000 * end.max("rbee_queen_write_lag_seconds")})
	switch {
	case r.False != 0 || r.SampleFalse != 0 || r.HiveExpired != 0:
		r.Problems = append(r.Problems, fmt.Sprintf("false expiries: %d workers (by the queen's count), %d sampled, %d hives", r.False, r.SampleFalse, r.HiveExpired))
	case r.Killed[1] != r.Killed[0]:
		r.Problems = append(r.Problems, fmt.Sprintf("%d of %d killed workers expired", r.Killed[1], r.Killed[0]))
	}
	if r.Changes[1] != r.Changes[0] {
		r.Problems = append(r.Problems, fmt.Sprintf("%d changes sent in the window, %d written", r.Changes[0], r.Changes[1]))
	}
	if r.Generator.Errors > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("the load generator failed %d publishes", r.Generator.Errors))
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	var ls []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		ls = append(ls, sc.Text())
	}
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// logScale is the default progress log.
func logScale(format string, args ...any) { log.Printf(format, args...) }

// saveProfile writes the profile a queen serves (--pprof) at url to path.
func saveProfile(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: status %s", url, resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", url, err)
	}
	return f.Close()
}
