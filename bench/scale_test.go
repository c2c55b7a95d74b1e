package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/wire"
)

// TestMain lets the test binary serve as the scale phase's load generator,
// as the bench binary does.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "-role" && os.Args[2] == "scale-load" {
		if err := scaleLoadMain(os.Args[3:]); err != nil {
			fmt.Fprintln(os.Stderr, "scale-load:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestScaleShape(t *testing.T) {
	for _, tc := range []struct {
		name     string
		n        int
		rate     float64
		layers   int
		interval time.Duration
	}{
		{"joins within one interval", 1000, 10000, 1, 30 * time.Second},
		{"joins over several intervals", 1000, 10, 4, 30 * time.Second},
		{"uneven", 997, 7, 5, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := newScaleShape(tc.n, 100, tc.interval, tc.interval/2, tc.rate)
			if err != nil {
				t.Fatal(err)
			}
			if s.Layers != tc.layers {
				t.Errorf("layers = %d, want %d", s.Layers, tc.layers)
			}
			// Every worker's first beat falls within the join time, and no
			// more than the join rate (plus one slot's burst) start in any second.
			perSecond := map[int]int{}
			keys := map[string]bool{}
			for i := range tc.n {
				f := s.first(i)
				if f < 0 || f >= s.joinTime() {
					t.Fatalf("worker %d first beats at %s, outside [0, %s)", i, f, s.joinTime())
				}
				perSecond[int(f/time.Second)]++
				if s.beatsBy(i, f) != 1 || s.beatsBy(i, f-1) != 0 || s.beatsBy(i, f+s.Interval) != 2 {
					t.Fatalf("worker %d: beatsBy around its first beat %s is wrong", i, f)
				}
				keys[s.key(i)] = true
			}
			for sec, c := range perSecond {
				if float64(c) > tc.rate+float64(s.Layers) {
					t.Errorf("second %d: %d workers join, more than %g", sec, c, tc.rate)
				}
			}
			if len(keys) != tc.n {
				t.Errorf("%d distinct keys for %d workers", len(keys), tc.n)
			}
			// In the steady state each worker beats once per interval.
			el := s.joinTime() + 7*s.Interval/3
			beats := 0
			for i := range tc.n {
				beats += s.beatsBy(i, el+s.Interval) - s.beatsBy(i, el)
			}
			if beats != tc.n {
				t.Errorf("%d beats in one steady interval, want %d", beats, tc.n)
			}
			change, kill, err := s.samples(50, 20)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[int]bool{}
			for _, i := range append(change, kill...) {
				if seen[i] || i < 0 || i >= tc.n {
					t.Fatalf("sample worker %d repeated or outside the fleet", i)
				}
				seen[i] = true
			}
			// Whole hives, as few as the counts allow, the changing and the
			// killed in hives of their own.
			change, kill, err = s.samples(150, 120)
			if err != nil {
				t.Fatal(err)
			}
			hivesOf := func(idx []int) map[int]bool {
				m := map[int]bool{}
				for _, i := range idx {
					m[i%s.Hives] = true
				}
				return m
			}
			hc, hk := hivesOf(change), hivesOf(kill)
			if len(change) != 150 || len(kill) != 120 || len(hc) != 2 || len(hk) != 2 {
				t.Fatalf("%d changing workers in hives %v, %d killed in %v: want 150 and 120, two hives each", len(change), hc, len(kill), hk)
			}
			for h := range hc {
				if hk[h] {
					t.Fatalf("hive %d holds changing and killed workers", h)
				}
			}
			one, err := newScaleShape(100, 100, tc.interval, tc.interval/2, tc.rate)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := one.samples(1, 1); err == nil {
				t.Fatal("changing and killed workers from one hive: no error")
			}
		})
	}
	if _, err := newScaleShape(10, 1000, time.Second, time.Second, 1); err == nil {
		t.Error("1000 workers per hive: no error")
	}
}

func TestWorkerTemplate(t *testing.T) {
	s, err := newScaleShape(250000, 100, 30*time.Second, 15*time.Second, 10000)
	if err != nil {
		t.Fatal(err)
	}
	g := &scaleLoad{s: s, inst: "0123456789abcdef"}
	if g.ready, err = newWorkerTemplate(s, wire.StatusReady, 0); err != nil {
		t.Fatal(err)
	}
	if g.busy, err = newWorkerTemplate(s, wire.StatusBusy, 4); err != nil {
		t.Fatal(err)
	}
	if err := g.check(); err != nil {
		t.Fatal(err)
	}
	w, err := wire.DecodeWorker(g.busy.fill(s, g.inst, 123456, 3, sentAtBase))
	if err != nil {
		t.Fatal(err)
	}
	if w.HiveID != "gpu-node-000956" || w.WorkerID != "llm-049" || w.SlotsBusy != 4 || w.Seq != scaleSeqBase+3 || w.Validate() != nil {
		t.Errorf("worker 123456 reads %s.%s slots %d seq %d: %v", w.HiveID, w.WorkerID, w.SlotsBusy, w.Seq, w.Validate())
	}
	h, err := wire.Marshal(g.hiveView(t, s))
	if err != nil {
		t.Fatal(err)
	}
	hv, err := wire.DecodeHive(h)
	if err != nil || hv.Validate() != nil || len(hv.Workers) != 100 {
		t.Errorf("hive beat: %v, %v, %d workers", err, hv.Validate(), len(hv.Workers))
	}
}

// hiveView returns hive 7's beat once all have joined.
func (g *scaleLoad) hiveView(t *testing.T, s scaleShape) *wire.Hive {
	t.Helper()
	g.role, g.last, g.start = map[int]byte{}, map[int]time.Time{}, time.Now()
	g.hive = sampleHive()
	return g.hiveBeat(7, 3, g.start.Add(s.joinTime()))
}

func TestReadSamples(t *testing.T) {
	t0 := time.UnixMilli(1767225600000)
	ms := func(d time.Duration) int64 { return t0.Add(d).UnixMilli() }
	put := func(at time.Duration, sent time.Duration, beat int, st wire.Status) kvOp {
		return kvOp{at: t0.Add(at), op: 'P', sentAt: ms(sent), seq: scaleSeqBase + uint64(beat), status: st}
	}
	T := 10 * time.Second
	ops := map[string][]kvOp{
		"a": {
			put(0, -time.Millisecond, 0, wire.StatusReady),                        // join: neither
			put(T+5*time.Millisecond, T, 1, wire.StatusReady),                     // refresh, age 5 ms
			put(2*T+7*time.Millisecond, 2*T, 2, wire.StatusBusy),                  // change, 7 ms
			put(4*T+9*time.Millisecond, 4*T, 4, wire.StatusReady),                 // change, 9 ms
			put(6*T+3*time.Millisecond, 6*T+time.Millisecond, 7, wire.StatusBusy), // change written with beat 7: 10 s + 2 ms
		},
		"b": {put(0, 0, 0, wire.StatusReady), {at: t0.Add(T), op: 'X'}, put(2*T, 2*T, 2, wire.StatusBusy)},
		"k": {put(0, 0, 0, wire.StatusReady), {at: t0.Add(3*T + 400*time.Millisecond), op: 'X'}},
	}
	f := readSamples(ops, []string{"a", "b"}, map[string]time.Time{"k": t0}, T, 3*T, t0, t0.Add(time.Hour))
	if f.changesSeen != 3 || f.viaLater != 1 || f.refreshes != 1 || f.falseExpiries != 1 || f.killedExpired != 1 {
		t.Errorf("changes %d (via later %d), refreshes %d, false expiries %d, killed expired %d; want 3 (1), 1, 1, 1",
			f.changesSeen, f.viaLater, f.refreshes, f.falseExpiries, f.killedExpired)
	}
	if got := percentiles(f.changeLag); got.MinMs != 7 || got.MaxMs != T.Seconds()*1000+2 {
		t.Errorf("change lag %+v", got)
	}
	if got := percentiles(f.lateness); got.N != 1 || got.MaxMs != 400 {
		t.Errorf("lateness %+v", got)
	}
}

// TestScaleRun runs the scale phase at a tiny size: real nats-server,
// `rbee queen` and the load generator processes, 2k workers at a 2 s
// interval held 3 intervals, with 50 killed.
func TestScaleRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds rbee and nats-server and runs them for about 15 s")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := scaleOptions{sizes: []int{2000}, interval: 2 * time.Second, hold: 3, joinRate: 10000, perHive: 100,
		changes: 100, kills: 50, self: self, logf: t.Logf}
	res, err := measureScale(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rows) != 1 {
		t.Fatalf("%d rows, want 1", len(res.Rows))
	}
	r := res.Rows[0]
	for _, c := range []struct {
		what string
		ok   bool
	}{
		{fmt.Sprintf("false expiries %d, sampled %d, hives %d: want none", r.False, r.SampleFalse, r.HiveExpired), r.False == 0 && r.SampleFalse == 0 && r.HiveExpired == 0},
		{fmt.Sprintf("killed %d, expired %d: want 50 of 50", r.Killed[0], r.Killed[1]), r.Killed == [2]int{50, 50}},
		{fmt.Sprintf("expiry beyond the TTL %+v: want 50, none early, under 5 s", r.Lateness), r.Lateness.N == 50 && r.Lateness.MinMs >= 0 && r.Lateness.MaxMs < 5000},
		{fmt.Sprintf("live workers %v: want 1950", r.Live), r.Live == [2]int{1950, 1950}},
		{fmt.Sprintf("changes sent / written %v: want equal and some", r.Changes), r.Changes[0] > 0 && r.Changes[0] == r.Changes[1]},
		{fmt.Sprintf("change lag %+v: want every change, under 5 s", r.ChangeLag), r.ChangeLag.N == r.Changes[1] && r.ChangeLag.MaxMs < 5000},
		{fmt.Sprintf("worker writes %.0f/s: want about 1000", r.Writes), r.Writes > 700 && r.Writes < 1300},
		{fmt.Sprintf("hive writes %.1f/s: want about 20", r.HiveWrites), r.HiveWrites > 14 && r.HiveWrites < 26},
		{fmt.Sprintf("queen %.3f and broker %.3f cores", r.QueenCores, r.BrokerCores),
			r.QueenCores > 0 && r.BrokerCores > 0 && r.TotalCores < float64(runtime.NumCPU())},
		{fmt.Sprintf("queen RSS %d (peak %d), broker %d (peak %d)", r.QueenRSS, r.QueenPeak, r.BrokerRSS, r.BrokerPeak),
			r.QueenRSS > 1<<20 && r.QueenPeak >= r.QueenRSS && r.BrokerRSS > 1<<20 && r.BrokerPeak >= r.BrokerRSS},
		{fmt.Sprintf("problems %q", r.Problems), len(r.Problems) == 0},
	} {
		if !c.ok {
			t.Error(c.what)
		}
	}
	dir := t.TempDir()
	png := filepath.Join(dir, "scale.png")
	if err := writeScalePlot(&res, png); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(png); err != nil || len(b) < 1000 || string(b[1:4]) != "PNG" {
		t.Errorf("plot: %d bytes, %v", len(b), err)
	}
	md := markdown(&results{Scale: &res}, notesMarker+"\n", "scale.png")
	for _, want := range []string{"## 3. Scale", "| 2k | 20 |", "**Cost per 100k workers**", "![CPU", "scale, 2k workers: false expiries | 0 | 0 (killed 50, expired 50) | met"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestSplitPerf(t *testing.T) {
	out := []byte(`
	  936246 github.com/nats-io/nats.go/jetstream.(*jetStream).newAsyncReply
	  98bb5d github.com/rbee/heartbeat/queen.(*writer).run
	  943c1 runtime.goexit.abi0

	ffffffff82242f09 pvm_irq_enable
	ffffffff813aecd2 finish_task_switch.isra.0
	  375972 runtime.notewakeup
	  375972 github.com/nats-io/nats%2ego.(*Conn).processMsg

	ffffffff82242f09 pvm_irq_enable
	  965ffa github.com/rbee/heartbeat/registry.(*Watcher).apply

	ffffffff82242f09 [unknown]
`)
	n, split := splitPerf(out)
	want := "[{Go scheduler: waking, parking and idle threads (futex, sysmon, netpoll) 25} {other (kernel, runtime) 25} " +
		"{queen: registry watch of its own buckets 25} {queen: writer (KV publishes) 25}]"
	if n != 4 || fmt.Sprint(split) != want {
		t.Errorf("splitPerf = %d, %v; want 4, %s", n, split, want)
	}
}
