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
// Encode/decode cost and payload sizes are go test benchmarks
// (go test -bench . ./bench/ ./wire/).
//
// Usage:
//
//	go run ./bench [-cpuprofile bench/cpu.prof] [-only ingest|liveness]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
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
}

func main() {
	var o options
	sizes := flag.String("sizes", "10000,100000", "fleet sizes (distinct workers) for the ingest phase")
	flag.IntVar(&o.trials, "trials", 3, "timed trials per system and size (the median is reported)")
	flag.IntVar(&o.beats, "beats", 300000, "beats per timed trial")
	flag.Uint64Var(&o.window, "window", 16384, "most beats the generator has sent and the system has not yet handled")
	flag.IntVar(&o.httpSenders, "http-senders", 4, "concurrent keep-alive senders for the HTTP/JSON design")
	flag.IntVar(&o.httpBeats, "http-beats", 60000, "beats per timed HTTP trial")
	flag.IntVar(&o.liveWorkers, "live-workers", 300, "workers in the liveness phase, each on its own connection")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of one extra queen trial at the largest size")
	flag.StringVar(&o.md, "md", "BENCHMARKS.md", "markdown report to write (empty: none)")
	flag.StringVar(&o.json, "json", "bench/results.json", "JSON results to write (empty: none)")
	flag.StringVar(&o.only, "only", "", "run one phase: ingest or liveness (default both)")
	flag.Parse()
	log.SetFlags(log.Ltime)
	for s := range strings.SplitSeq(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			log.Fatalf("bad -sizes %q", *sizes)
		}
		o.sizes = append(o.sizes, n)
	}
	if o.only != "" && o.only != "ingest" && o.only != "liveness" {
		log.Fatalf("unknown phase %q", o.only)
	}
	res := &results{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), Command: strings.Join(os.Args[1:], " "),
		Machine: describeMachine(), Settings: o.settings(), LoadStart: loadAvg()}
	start := time.Now()
	log.Printf("machine: %s; load average %s", res.Machine, res.LoadStart)
	if o.only != "liveness" {
		for _, n := range o.sizes {
			r, err := measureIngest(o, n, n == o.sizes[len(o.sizes)-1])
			if err != nil {
				log.Fatalf("ingest %d: %v", n, err)
			}
			res.Ingest = append(res.Ingest, r)
		}
	}
	if o.only != "ingest" {
		l, err := measureLiveness(o.liveWorkers)
		if err != nil {
			log.Fatalf("liveness: %v", err)
		}
		res.Liveness = &l
	}
	res.WallTime, res.LoadEnd = time.Since(start).Round(time.Second).String(), loadAvg()
	if o.json != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err == nil {
			err = os.WriteFile(o.json, append(b, '\n'), 0o644)
		}
		if err != nil {
			log.Fatal(err)
		}
	}
	if o.md != "" {
		if err := os.WriteFile(o.md, []byte(markdown(res, keptNotes(o.md))), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	for _, t := range targets(res) {
		fmt.Printf("%-44s %-14s %-22s %s\n", t.Name, t.Goal, t.Got, mark(t.Met))
	}
	log.Printf("done in %s; load average %s", res.WallTime, res.LoadEnd)
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
