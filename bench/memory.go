package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"
)

// memoryResult is the queen's memory per registered worker and its CPU per
// 100k beats, measured with the broker in a child process so that this
// process holds only the queen, its connection and the load generator.
type memoryResult struct {
	Workers int `json:"workers"`
	// FixtureHeap is the heap the load generator's fixtures hold.
	FixtureHeap uint64 `json:"fixture_heap_bytes"`
	// Heap is the live heap after two GCs: with the queen started on empty
	// buckets, and once every worker is registered (KV entry, tracker entry,
	// watcher mirror entry).
	HeapStarted      uint64       `json:"heap_started_bytes"`
	HeapRegistered   uint64       `json:"heap_registered_bytes"`
	HeapPerWorker    float64      `json:"queen_heap_bytes_per_worker"`
	RSSStarted       int64        `json:"rss_started_bytes"`
	RSSRegistered    int64        `json:"rss_registered_bytes"`
	RSSPerWorker     float64      `json:"queen_rss_bytes_per_worker"`
	BrokerRSS        int64        `json:"broker_rss_bytes"`
	Beats            uint64       `json:"cpu_beats"`
	Rate             float64      `json:"beats_per_s"`
	ProcCPUPer100k   float64      `json:"queen_process_cpu_s_per_100k"`
	GenCPUPer100k    float64      `json:"generator_cpu_s_per_100k"`
	QueenCPUPer100k  float64      `json:"queen_cpu_s_per_100k"`
	BrokerCPUPer100k float64      `json:"broker_cpu_s_per_100k"`
	Verify           verification `json:"verification"`
}

// profileResult is a CPU profile of the queen's process under load.
type profileResult struct {
	Path  string  `json:"path"`
	Beats uint64  `json:"beats"`
	Rate  float64 `json:"beats_per_s"`
	Top   string  `json:"top"`
	Split []share `json:"by_activity"`
}

// share is the part of the profile's samples spent on one activity.
type share struct {
	Activity string  `json:"activity"`
	Percent  float64 `json:"percent"`
}

// activities classify a sample by the functions on its stack, first match
// wins.
var activities = []struct {
	name string
	all  []string
}{
	{"load generator (bench)", []string{"main.(*gen).run"}},
	{"garbage collector (background)", []string{"runtime.gcBgMarkWorker"}},
	{"garbage collector (background)", []string{"runtime.bgsweep"}},
	{"garbage collector (background)", []string{"runtime.bgscavenge"}},
	{"beat: decode and validate (subscriber.Decode)", []string{"queen.(*Queen).onMsg", "subscriber.Decode"}},
	{"beat: registry write (writer.write, nats publish)", []string{"queen.(*Queen).onMsg", "queen.(*writer)"}},
	{"beat: replay check (tracker.admit)", []string{"queen.(*Queen).onMsg", "tracker"}},
	{"beat: encode the entry", []string{"queen.(*Queen).onMsg", "wire."}},
	{"beat: other", []string{"queen.(*Queen).onMsg"}},
	{"write acknowledgements (writer.acked)", []string{"queen.(*writer).acked"}},
	{"registry watcher: decode entry", []string{"registry.(*Watcher)", "DecodeWorkerEntry"}},
	{"registry watcher: tracker.observe", []string{"registry.(*Watcher)", "tracker"}},
	{"registry watcher: mirror map and events", []string{"registry.(*Watcher)"}},
	{"KV watch delivery (nats.go jetstream)", []string{"jetstream.(*kvs)"}},
	{"KV watch delivery (nats.go jetstream)", []string{"jetstream.(*orderedConsumer)"}},
	{"NATS client: read and parse (readLoop)", []string{"nats%2ego.(*Conn).readLoop"}},
	{"NATS client: write (flusher)", []string{"nats%2ego.(*Conn).flusher"}},
}

// splitProfile attributes the samples of go tool pprof -traces output to
// activities.
func splitProfile(traces string) []share {
	ms := func(v string) float64 {
		switch {
		case strings.HasSuffix(v, "ms"):
			f, _ := strconv.ParseFloat(strings.TrimSuffix(v, "ms"), 64)
			return f
		case strings.HasSuffix(v, "us"), strings.HasSuffix(v, "µs"):
			return 0
		case strings.HasSuffix(v, "s"):
			f, _ := strconv.ParseFloat(strings.TrimSuffix(v, "s"), 64)
			return f * 1000
		}
		return 0
	}
	by := map[string]float64{}
	var total float64
	for block := range strings.SplitSeq(traces, "-----------+-------------------------------------------------------") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		f := strings.Fields(lines[0])
		if len(f) < 2 || !strings.HasSuffix(f[0], "s") {
			continue
		}
		v := ms(f[0])
		total += v
		stack := strings.Join(lines, "\n")
		name := "other (runtime, scheduler, syscalls)"
	match:
		for _, a := range activities {
			for _, fn := range a.all {
				if !strings.Contains(stack, fn) {
					continue match
				}
			}
			name = a.name
			break
		}
		by[name] += v
	}
	var out []share
	for k, v := range by {
		out = append(out, share{k, 100 * v / total})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Percent > out[j].Percent })
	return out
}

func measureMemory(o options) (memoryResult, *profileResult, error) {
	n := o.memWorkers
	r := memoryResult{Workers: n}
	log.Printf("memory and CPU: %d workers, broker in a child process", n)
	h0 := heap()
	f, err := newFleet(n)
	if err != nil {
		return r, nil, err
	}
	r.FixtureHeap = heap() - h0
	dir, err := os.MkdirTemp("", "rbee-bench-mem-")
	if err != nil {
		return r, nil, err
	}
	defer os.RemoveAll(dir)
	s, err := startQueenStack(dir, true, ingestTTL, nil)
	if err != nil {
		return r, nil, err
	}
	defer s.Stop()
	g := &gen{f: f, s: newQueenSink(s, f), window: o.window}
	limit := 120 * time.Second

	r.HeapStarted, r.RSSStarted = heap(), rssBytes("self")
	if _, err := g.run(uint64(n), limit); err != nil {
		return r, nil, fmt.Errorf("register: %w", err)
	}
	if err := waitFor(context.Background(), 60*time.Second, func() bool { return s.q.Stats().Workers == n }); err != nil {
		return r, nil, fmt.Errorf("mirror: %w", err)
	}
	r.HeapRegistered, r.RSSRegistered = heap(), rssBytes("self")
	r.HeapPerWorker = (float64(r.HeapRegistered) - float64(r.HeapStarted)) / float64(n)
	r.RSSPerWorker = float64(r.RSSRegistered-r.RSSStarted) / float64(n)
	r.BrokerRSS = rssBytes(fmt.Sprint(s.b.PID))

	rounds := max(1, o.beats/n)
	r.Beats = uint64(rounds * n)
	p0, b0 := processCPU(), pidCPU(s.b.PID)
	t, err := g.run(r.Beats, limit)
	if err != nil {
		return r, nil, err
	}
	p1, b1 := processCPU(), pidCPU(s.b.PID)
	per := func(d time.Duration) float64 { return d.Seconds() / float64(r.Beats) * 1e5 }
	r.Rate = t.Rate
	r.ProcCPUPer100k = per(p1 - p0)
	r.BrokerCPUPer100k = per(b1 - b0)
	// What the generator costs on its own: the same messages published where
	// nobody listens.
	ng := &gen{f: f, s: &nullSink{core: &coreSink{pub: s.gen, f: f}}, window: o.window}
	nt, err := ng.run(r.Beats, limit)
	if err != nil {
		return r, nil, fmt.Errorf("generator calibration: %w", err)
	}
	r.GenCPUPer100k = nt.ProcCPU.Seconds() / float64(r.Beats) * 1e5
	r.QueenCPUPer100k = r.ProcCPUPer100k - r.GenCPUPer100k

	var prof *profileResult
	if o.cpuProfile != "" {
		log.Printf("CPU profile of the queen's process: %d beats", r.Beats)
		prof, err = profile(o.cpuProfile, o.memProfile, g, r.Beats, limit)
		if err != nil {
			return r, nil, err
		}
	}
	r.Verify = verify(s, f, g.cursor)
	return r, prof, nil
}

// profile runs beats more beats under the CPU profiler and summarises the
// profile with go tool pprof -top. With memPath it also writes the
// allocation profile (all allocations since the start) there.
func profile(path, memPath string, g *gen, beats uint64, limit time.Duration) (*profileResult, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	fh, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	if err := pprof.StartCPUProfile(fh); err != nil {
		return nil, err
	}
	t, err := g.run(beats, limit)
	pprof.StopCPUProfile()
	if err != nil {
		return nil, err
	}
	if memPath != "" {
		f, err := os.Create(memPath)
		if err != nil {
			return nil, err
		}
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	}
	p := &profileResult{Path: path, Beats: beats, Rate: t.Rate}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	out, err := exec.Command(goBin, "tool", "pprof", "-top", "-nodecount=30", path).CombinedOutput()
	if err != nil {
		p.Top = fmt.Sprintf("go tool pprof failed: %v", err)
		return p, nil
	}
	p.Top = strings.TrimSpace(string(out))
	if out, err := exec.Command(goBin, "tool", "pprof", "-traces", path).Output(); err == nil {
		p.Split = splitProfile(string(out))
	}
	return p, nil
}
