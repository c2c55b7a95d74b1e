// Command bench measures rbee-heartbeat on the machine it runs on and writes
// BENCHMARKS.md and bench/results.json.
//
// Everything runs in one process on loopback: an embedded nats-server with
// a temporary store, the queen, a load generator and an HTTP server for the
// seed design. Two phases:
//
//   - ingest: the queen (decode, validate, per-entry TTL, KV write
//     acknowledged, nothing lost) beside the bus limit (core NATS), the store
//     limit (KV publishes with Nats-TTL, as the queen writes) and the
//     HTTP/JSON seed design, at each fleet size, in the same run;
//   - liveness: workers on their own connections crash (connection closed,
//     no goodbye) or leave; crash → disconnected, crash → expired beyond each
//     worker's own TTL, goodbye → left.
//
// A third phase, scale (-only scale), runs each part in its own process as an
// operator does (nats-server, rbee queen, a load generator) and holds fleets
// of 10k to 1M workers at the default intervals; see scale.go. It is not part
// of the default run: by its timetable it takes a quarter of an hour (each
// size joins, then is held three intervals) and wants a quiet machine.
//
// Encode/decode cost and payload sizes are go test benchmarks
// (go test -bench . ./bench/ ./wire/).
//
// Usage:
//
//	go run ./bench [-cpuprofile bench/cpu.prof] [-only ingest|liveness|scale]
//
// A run keeps the sections it did not run from the results file it
// rewrites (-json), so -only scale leaves the ingest and liveness results as
// they were, and a run without scale keeps the last scale results.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the run's knobs.
type options struct {
	sizes       []int
	trials      int
	beats       int
	window      uint64
	httpSenders int
	httpBeats   int
	liveWorkers int
	cpuProfile  string
	md, json    string
	only        string
	scale       scaleOptions
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-role" && os.Args[2] == "scale-load" {
		if err := scaleLoadMain(os.Args[3:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench scale-load:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	sizes := flag.String("sizes", "10000,100000", "fleet sizes (distinct workers) for the ingest phase")
	scaleSizes := flag.String("scale-sizes", "10000,100000,300000,1000000", "fleet sizes (workers) for the scale phase; empty: none")
	flag.DurationVar(&o.scale.interval, "scale-interval", 30*time.Second, "the scale phase's worker interval (hives beat at half of it)")
	flag.IntVar(&o.scale.hold, "scale-hold", 3, "the scale phase's measured window after all have joined, in worker intervals")
	flag.Float64Var(&o.scale.joinRate, "scale-join-rate", 10000, "most workers joining per second in the scale phase")
	flag.IntVar(&o.scale.perHive, "scale-per-hive", 100, "workers per hive in the scale phase")
	flag.IntVar(&o.scale.changes, "scale-changes", 200, "workers whose status changes every second beat (the lag sample)")
	flag.IntVar(&o.scale.kills, "scale-kills", 100, "workers killed once all have joined (the expiry sample)")
	flag.IntVar(&o.scale.cluster, "scale-cluster", 0, "workers in a run against a 3-server cluster with three queens after the sizes (0: none)")
	flag.StringVar(&o.scale.plot, "scale-plot", "bench/scale.png", "PNG the scale phase draws its CPU and RSS into (empty: none)")
	rssLimit := flag.Int64("scale-rss-limit-mib", totalRAM()>>21, "a queen or broker whose RSS passes this many MiB is killed and the scale run fails (default: half the machine's memory; 0: no limit)")
	flag.StringVar(&o.scale.perf, "scale-perf", "", "record each queen and broker with Linux perf over the window into this folder, and split the samples by activity (perf adds its own load)")
	flag.StringVar(&o.scale.heap, "scale-heap", "", "save each queen's and broker's CPU profile over the window's first 30 s, and each queen's heap profile at its end, into this folder (queens run with --pprof, brokers with --profile)")
	flag.IntVar(&o.trials, "trials", 3, "timed trials per system and size (the median is reported)")
	flag.IntVar(&o.beats, "beats", 300000, "beats per timed trial")
	flag.Uint64Var(&o.window, "window", 16384, "most beats the generator has sent and the system has not yet handled")
	flag.IntVar(&o.httpSenders, "http-senders", 4, "concurrent keep-alive senders for the HTTP/JSON design")
	flag.IntVar(&o.httpBeats, "http-beats", 60000, "beats per timed HTTP trial")
	flag.IntVar(&o.liveWorkers, "live-workers", 300, "workers in the liveness phase, each on its own connection")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of one extra queen trial at the largest size")
	flag.StringVar(&o.md, "md", "BENCHMARKS.md", "markdown report to write (empty: none)")
	flag.StringVar(&o.json, "json", "bench/results.json", "JSON results to write (empty: none)")
	flag.StringVar(&o.only, "only", "", "run one phase: ingest, liveness or scale (default ingest and liveness); report: run nothing, write the report and the plot from the results file")
	flag.Parse()
	log.SetFlags(log.Ltime)
	var err error
	if o.sizes, err = parseSizes(*sizes, false); err != nil {
		log.Fatalf("bad -sizes: %v", err)
	}
	if o.scale.sizes, err = parseSizes(*scaleSizes, true); err != nil {
		log.Fatalf("bad -scale-sizes: %v", err)
	}
	if o.only != "" && o.only != "ingest" && o.only != "liveness" && o.only != "scale" && o.only != "report" {
		log.Fatalf("unknown phase %q", o.only)
	}
	if o.scale.self, err = os.Executable(); err != nil {
		log.Fatal(err)
	}
	o.scale.logf = logScale
	o.scale.rssLimit = *rssLimit << 20
	if o.scale.perf != "" {
		if _, err := exec.LookPath("perf"); err != nil {
			log.Fatalf("-scale-perf: %v", err)
		}
		if err := os.MkdirAll(o.scale.perf, 0o755); err != nil {
			log.Fatal(err)
		}
	}
	res := &results{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), Command: strings.Join(os.Args[1:], " "),
		Machine: describeMachine(), Settings: o.settings(), LoadStart: loadAvg()}
	prev := readResults(o.json)
	start := time.Now()
	log.Printf("machine: %s; load average %s", res.Machine, res.LoadStart)
	if o.only == "report" {
		if prev == nil {
			log.Fatalf("-only report: no results in %q", o.json)
		}
		res = prev
		if res.Scale != nil && o.scale.plot != "" {
			if err := writeScalePlot(res.Scale, o.scale.plot); err != nil {
				log.Fatalf("scale plot: %v", err)
			}
		}
	} else if o.only == "scale" {
		// Interrupted, the phase stops its processes and removes its files.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		sc, err := measureScale(ctx, o.scale)
		stop()
		if err != nil {
			log.Fatalf("scale: %v", err)
		}
		res = keepAllBut(prev, res)
		res.Scale = mergeScale(prev, &sc)
		if o.scale.plot != "" {
			if err := writeScalePlot(res.Scale, o.scale.plot); err != nil {
				log.Fatalf("scale plot: %v", err)
			}
		}
	} else if prev != nil {
		res.Scale = prev.Scale
	}
	if o.only == "" || o.only == "ingest" {
		for _, n := range o.sizes {
			r, err := measureIngest(o, n, n == o.sizes[len(o.sizes)-1])
			if err != nil {
				log.Fatalf("ingest %d: %v", n, err)
			}
			res.Ingest = append(res.Ingest, r)
		}
	}
	if o.only == "" || o.only == "liveness" {
		l, err := measureLiveness(o.liveWorkers)
		if err != nil {
			log.Fatalf("liveness: %v", err)
		}
		res.Liveness = &l
	}
	if o.only == "" || o.only == "ingest" || o.only == "liveness" {
		res.WallTime, res.LoadEnd = time.Since(start).Round(time.Second).String(), loadAvg()
	}
	if o.json != "" && o.only != "report" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err == nil {
			err = os.WriteFile(o.json, append(b, '\n'), 0o644)
		}
		if err != nil {
			log.Fatal(err)
		}
	}
	if o.md != "" {
		plot := ""
		if o.scale.plot != "" {
			if rel, err := filepath.Rel(filepath.Dir(o.md), o.scale.plot); err == nil {
				plot = filepath.ToSlash(rel)
			}
		}
		if err := os.WriteFile(o.md, []byte(markdown(res, keptNotes(o.md), plot)), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	for _, t := range targets(res) {
		fmt.Printf("%-44s %-14s %-22s %s\n", t.Name, t.Goal, t.Got, mark(t.Met))
	}
	log.Printf("done in %s; load average %s", time.Since(start).Round(time.Second), loadAvg())
}

// results is everything one run measured.
type results struct {
	Date      string          `json:"date"`
	Command   string          `json:"flags"`
	Machine   string          `json:"machine"`
	WallTime  string          `json:"wall_time"`
	LoadStart string          `json:"load_average_start"`
	LoadEnd   string          `json:"load_average_end"`
	Settings  map[string]any  `json:"settings"`
	Ingest    []ingestResult  `json:"ingest,omitempty"`
	Liveness  *livenessResult `json:"liveness,omitempty"`
	// Scale has its own date, flags and machine: it is run apart.
	Scale *scaleResult `json:"scale,omitempty"`
}

// readResults returns the results file at path, or nil.
func readResults(path string) *results {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var r results
	if json.Unmarshal(b, &r) != nil {
		return nil
	}
	return &r
}

// keepAllBut returns prev without its scale results, for a run of the scale
// phase alone; cur if there is no prev.
func keepAllBut(prev, cur *results) *results {
	if prev == nil {
		return cur
	}
	r := *prev
	r.Scale = nil
	return &r
}

// mergeScale returns cur, with the sizes or the cluster run it did not run
// kept from prev.
func mergeScale(prev *results, cur *scaleResult) *scaleResult {
	if prev == nil || prev.Scale == nil {
		return cur
	}
	if len(cur.Rows) == 0 {
		cur.Rows = prev.Scale.Rows
	}
	if cur.Cluster == nil {
		cur.Cluster = prev.Scale.Cluster
	}
	return cur
}

// parseSizes reads a comma-separated list of positive counts.
func parseSizes(s string, emptyOK bool) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" && emptyOK {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive count", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func (o options) settings() map[string]any {
	return map[string]any{"fleet_sizes": o.sizes, "trials": o.trials, "beats_per_trial": o.beats,
		"generator_window": o.window, "http_senders": o.httpSenders, "http_beats_per_trial": o.httpBeats,
		"liveness_workers": o.liveWorkers}
}

// describeMachine names the CPUs, memory, Go and kernel.
func describeMachine() string {
	model, ram := "", ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		ram = fmt.Sprintf("%.1f GiB RAM", float64(si.Totalram)*float64(si.Unit)/(1<<30))
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d CPUs, %s, %s, %s %s/%s, Linux %s", runtime.NumCPU(), model, ram,
		runtime.Version(), runtime.GOOS, runtime.GOARCH, strings.TrimSpace(string(kernel)))
}

// totalRAM returns the machine's memory in bytes, or 0.
func totalRAM() int64 {
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}

// loadAvg returns the 1, 5 and 15 minute load averages, as /proc/loadavg has them.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// load1 returns the 1-minute load average, or 0.
func load1() float64 {
	v, _ := strconv.ParseFloat(strings.Fields(loadAvg() + " 0")[0], 64)
	return v
}

// processCPU returns this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
