// Command chaos is rbee's reliability program: it attacks a running system
// the way issue 9 lists (overload, a paused queen, kill -9 and restart, a
// network outage, a full disk, forged beats) with real processes, judges
// only through NATS, KV, HTTP and /metrics, and writes RELIABILITY.md.
//
//	go run ./chaos                 # every case, about 10 minutes on 2 cores
//	go run ./chaos -quick          # shorter and smaller, about 2 minutes
//	go run ./chaos -case overload  # one case (overload runs the capacity ramp first)
//
// It builds cmd/rbee once, starts `rbee queen` (embedded broker on a loopback
// port, data in a temporary folder) and `rbee worker --simulate N` children,
// and runs its own load generator as a separate process. Everything listens
// on 127.0.0.1 only.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

type options struct {
	cases     string
	quick     bool
	out       string
	capacity  float64       // writes/s; 0: measure with the ramp
	rate      int           // offered beats/s in the overload case; 0: 2 × capacity
	outage    time.Duration // blackhole length in the outage case
	rssLimit  int64         // the bounded-memory target, bytes; 0: rssPerKey × keys
	rssPerKey int64         // the bounded-memory target per key offered, bytes
	note      string
	baseline  string // an earlier report whose summary is quoted for comparison
	healthy   int    // healthy workers whose false expiries are counted
	repeat    int    // runs of each case
}

// kase is one attack.
type kase struct {
	name   string
	title  string
	target string
	run    func(w *world, r *result) error
}

func cases() []kase {
	return []kase{
		{"capacity", "What the queen can write", "(measured; sets the overload case's offered load)", runCapacity},
		{"overload", "Offered load 2× what the queen can write, TTL of 3 beats",
			"0 false expiries, 0 silent drops, 0 lost goodbyes, RSS bounded per key offered", runOverload},
		{"busy", "50k workers at 1 s (one process) and 50 probe workers (another), TTL of 3 beats, quiet machine",
			"0 false expiries, goodbyes arrive as left", runBusy(false)},
		{"busyburn", "As busy, with another process burning one core beside them",
			"0 false expiries, goodbyes arrive as left", runBusy(true)},
		{"pause", "One of two queens paused (SIGSTOP) 2 × TTL, goodbyes meanwhile", "0 false expiries, goodbyes arrive as left", runPause(false)},
		{"pauselong", "One of two queens paused past its own entry's TTL on a broker with nats-server's default pings, goodbyes after the entry expired",
			"0 false expiries, goodbyes arrive as left", runPause(true)},
		{"pause1", "The only queen paused (SIGSTOP) 2 × TTL, broker apart",
			"expiries reported as a disruption, registry whole within one interval of the resume", runPauseSingle},
		{"kill9", "kill -9 of the queen mid-ingest, restart within one interval", "0 false expiries", runKill9},
		{"outage", "Network blackhole between workers and broker (toxiproxy)", "0 false expiries", runOutage},
		{"fulldisk", "Full disk under the queen's JetStream store",
			"`degraded` within one interval, recovery without restart", runFullDisk},
		{"forgery", "Forged beats", "lockout ≤ 1 TTL, conflict reported", runForgery},
	}
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-role" && os.Args[2] == "burn" {
		burn()
	}
	if len(os.Args) > 2 && os.Args[1] == "-role" && os.Args[2] == "load" {
		if err := loadMain(os.Args[3:]); err != nil {
			fmt.Fprintln(os.Stderr, "chaos load:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.StringVar(&o.cases, "case", "", "run only these cases (comma-separated): capacity, overload, busy, busyburn, pause, pauselong, pause1, kill9, outage, fulldisk, forgery")
	flag.IntVar(&o.repeat, "repeat", 1, "run each case this many times")
	flag.BoolVar(&o.quick, "quick", false, "shorter phases and smaller fleets (about 2 minutes in all)")
	flag.StringVar(&o.out, "out", "RELIABILITY.md", "report file")
	flag.Float64Var(&o.capacity, "capacity", 0, "the queen's write capacity in writes/s, instead of measuring it")
	flag.IntVar(&o.rate, "rate", 0, "offered beats/s in the overload case (default 2 × capacity)")
	flag.DurationVar(&o.outage, "outage", missed*interval-2200*time.Millisecond,
		"blackhole length in the outage case: docs/operations.md's margin, (missed − 2.2) × interval")
	rss := flag.Int("rss-limit-mib", 0, "the overload and busy cases' bound on the queen's peak RSS, MiB (0: -rss-per-key-kib × the keys offered)")
	perKey := flag.Int("rss-per-key-kib", 24, "the overload and busy cases' bound on the queen's peak RSS per key offered (load and healthy workers), KiB")
	flag.StringVar(&o.note, "note", "", "a line for the top of the report")
	flag.StringVar(&o.baseline, "baseline", "", "an earlier report (e.g. of the queen before a change) whose summary is quoted for comparison")
	flag.Parse()
	o.rssLimit, o.rssPerKey = int64(*rss)<<20, int64(*perKey)<<10
	o.healthy = 200
	if o.quick {
		o.healthy = 100
	}
	os.Exit(run(o))
}

func run(o options) int {
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
	start := time.Now()
	w, err := newWorld(o, logf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	defer w.close()
	want := map[string]bool{}
	for _, c := range strings.Split(o.cases, ",") {
		if c = strings.TrimSpace(c); c != "" {
			want[c] = true
		}
	}
	if want["overload"] && o.capacity == 0 {
		want["capacity"] = true
	}
	var results []*result
	for _, c := range cases() {
		if len(want) > 0 && !want[c.name] {
			continue
		}
		for i := range max(1, o.repeat) {
			r := &result{name: c.name, anchor: c.name, title: c.title, target: c.target, loadBefore: loadAvg(), command: command(o, c.name)}
			if o.repeat > 1 {
				r.round = fmt.Sprintf("%d of %d", i+1, o.repeat)
				r.name, r.anchor = c.name+" ("+r.round+")", fmt.Sprintf("%s-%d", c.name, i+1)
			}
			logf("case %s: %s", r.name, c.title)
			t0 := time.Now()
			if err := c.run(w, r); err != nil {
				r.err = err
				logf("case %s: %v", r.name, err)
			}
			r.took = time.Since(t0)
			r.loadAfter = loadAvg()
			logf("case %s: %s in %s", r.name, r.verdict(), r.took.Round(time.Second))
			results = append(results, r)
		}
	}
	rep := report{opt: o, results: results, missed: w.missed, took: time.Since(start), started: start}
	if err := os.WriteFile(o.out, []byte(rep.markdown()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	logf("wrote %s in %s", o.out, time.Since(start).Round(time.Second))
	for _, r := range results {
		if r.err != nil {
			return 1
		}
	}
	return 0
}

// command returns the command line that reproduces one case.
func command(o options, name string) string {
	s := "go run ./chaos -case " + name
	if o.quick {
		s += " -quick"
	}
	if name == "overload" && o.rate > 0 {
		s += fmt.Sprintf(" -rate %d", o.rate)
	} else if (name == "overload" || name == "kill9") && o.capacity > 0 {
		s += fmt.Sprintf(" -capacity %.0f", o.capacity)
	}
	if name == "outage" {
		s += " -outage " + o.outage.String()
	}
	return s + " -out /tmp/r.md"
}

// machine describes this host for the report.
func machine() []string {
	var out []string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				out = append(out, "CPU: "+strings.TrimSpace(strings.SplitN(l, ":", 2)[1]))
				break
			}
		}
	}
	out = append(out, fmt.Sprintf("cores: %d (runtime.NumCPU)", runtime.NumCPU()))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		out = append(out, "memory: "+strings.Join(strings.Fields(strings.Split(string(b), "\n")[0])[1:], " "))
	}
	if b, err := exec.Command("uname", "-sr").Output(); err == nil {
		out = append(out, "kernel: "+strings.TrimSpace(string(b)))
	}
	out = append(out, "Go: "+runtime.Version())
	if b, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		rev := strings.TrimSpace(string(b))
		if d, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); len(d) > 0 {
			rev += " (with uncommitted changes)"
		}
		out = append(out, "commit: "+rev)
	}
	return out
}

// burn keeps one core busy until the process is killed (the busyburn case's
// neighbour).
func burn() {
	var h uint64 = 14695981039346656037
	for i := uint64(0); ; i++ {
		h = (h ^ i) * 1099511628211
		if h == 0 {
			fmt.Fprintln(os.Stderr, "burn:", i)
		}
	}
}
