package main

import (
	"cmp"
	"os"
	"runtime/pprof"
	"slices"
	"strings"

	"github.com/google/pprof/profile"
)

// profileResult is the CPU profile of one queen trial by activity
// (go tool pprof -top gives the functions).
type profileResult struct {
	Path  string  `json:"path"`
	Beats uint64  `json:"beats"`
	Rate  float64 `json:"beats_per_s"`
	Split []share `json:"by_activity"`
}

// share is the part of the profile's CPU time spent on one activity or function.
type share struct {
	Name    string  `json:"name"`
	Percent float64 `json:"percent"`
}

// activities classify a sample by the functions on its stack: the first
// activity one of whose names is a substring of a frame wins.
var activities = []activity{
	{"load generator (bench)", "main.(*gen).run"},
	{"garbage collector (background)", "runtime.gcBgMarkWorker runtime.bgsweep runtime.bgscavenge"},
	{"broker (nats-server, in-process)", "nats-server/v2/"},
	{"queen: decode, validate, track a beat", "queen.(*Queen).onMsg"},
	{"queen: coalescing writer", "queen.(*writer)"},
	{"queen: registry watcher and events", "registry.(*Watcher) queen.(*Queen).onEvent"},
	{"nats.go jetstream: acks, KV watch", "nats.go/jetstream. nats%2ego/jetstream."},
	{"nats.go: read, parse, write", "nats.go.(*Conn) nats%2ego.(*Conn)"},
}

// profileTrial runs one more trial under the CPU profiler, writes the
// profile to path and summarises it.
func profileTrial(path string, g *gen, beats uint64) (*profileResult, error) {
	fh, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	if err := pprof.StartCPUProfile(fh); err != nil {
		return nil, err
	}
	t, err := g.run(beats)
	pprof.StopCPUProfile()
	if err != nil {
		return nil, err
	}
	if _, err := fh.Seek(0, 0); err != nil {
		return nil, err
	}
	p, err := profile.Parse(fh)
	if err != nil {
		return nil, err
	}
	return &profileResult{Path: path, Beats: beats, Rate: t.Rate, Split: classify(p)}, nil
}

// classify returns the shares of p's CPU time by activity, largest first.
func classify(p *profile.Profile) []share {
	vi := len(p.SampleType) - 1
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			vi = i
		}
	}
	by := map[string]int64{}
	var total int64
	for _, s := range p.Sample {
		v := s.Value[vi]
		total += v
		var names []string
		for _, loc := range s.Location {
			for _, ln := range loc.Line {
				names = append(names, ln.Function.Name)
			}
		}
		by[activityOf(names)] += v
	}
	var out []share
	for k, v := range by {
		out = append(out, share{k, 100 * float64(v) / float64(max(total, 1))})
	}
	slices.SortFunc(out, func(a, b share) int {
		return cmp.Or(cmp.Compare(b.Percent, a.Percent), strings.Compare(a.Name, b.Name))
	})
	return out
}

// activity names what a CPU sample was spent on by the frames on its stack.
type activity struct{ name, frames string }

func activityOf(frames []string) string {
	return activityIn(activities, frames, "other (runtime, scheduler, syscalls)")
}

// activityIn returns the first of acts one of whose frame names is a
// substring of one of frames, or other.
func activityIn(acts []activity, frames []string, other string) string {
	for _, a := range acts {
		for _, want := range strings.Fields(a.frames) {
			for _, f := range frames {
				if strings.Contains(f, want) {
					return a.name
				}
			}
		}
	}
	return other
}
