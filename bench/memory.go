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
	"strings"
	"time"
)

// memoryResult is the queen's memory per registered worker and its CPU per
// 100k beats, measured with the broker in a child process so that this
// process holds only the queen, its connection and the load generator.
type memoryResult struct {
	Workers int `json:"workers"`
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
}

func measureMemory(o options) (memoryResult, *profileResult, error) {
	n := o.memWorkers
	r := memoryResult{Workers: n}
	log.Printf("memory and CPU: %d workers, broker in a child process", n)
	f, err := newFleet(n)
	if err != nil {
		return r, nil, err
	}
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
	return p, nil
}
