package main

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rbee/heartbeat/internal/harness"
)

// With -scale-perf, the scale phase records each queen and broker with
// Linux perf over the window (user and kernel stacks: at these rates much of
// a process's time is spent waking and parking threads, which a Go CPU
// profile shows only in part) and splits the samples by activity.

// perfActivities classify a perf sample by its stack, first match wins:
// the scheduler's and the collector's own work before what it was doing it
// for, so that their cost shows whole.
var perfActivities = []activity{
	{"Go scheduler: waking, parking and idle threads (futex, sysmon, netpoll)",
		"runtime.findRunnable runtime.sysmon runtime.notewakeup runtime.wakep runtime.stopm runtime.startm runtime.notesleep " +
			"runtime.notetsleep runtime.netpoll runtime.park_m runtime.goready runtime.ready runtime.schedule runtime.mcall " +
			"runtime.osyield runtime.usleep runtime.futex runtime.entersyscall runtime.exitsyscall runtime.handoffp"},
	{"garbage collection", "runtime.gcBgMarkWorker runtime.gcAssistAlloc runtime.bgsweep runtime.bgscavenge runtime.gcStart runtime.markroot"},
	{"socket reads and writes (syscalls)", "syscall.read syscall.write internal/poll.(*FD).Read internal/poll.(*FD).Write internal/poll.(*FD).Writev"},
	{"queen: beat path (decode, validate, track)", "queen.(*Queen).onMsg queen.(*Queen).take queen.(*tracker)"},
	{"queen: writer (KV publishes)", "queen.(*writer)"},
	{"queen: registry watch of its own buckets", "registry."},
	{"nats.go jetstream: publish acks (JSON)", "jetstream.(*jetStream).handleAsyncReply"},
	{"nats.go: parse and dispatch", "nats%2ego. nats.go."},
	{"broker: raft (replication)", "server.(*raft)"},
	{"broker: consumers (the queens' KV watches)", "server.(*consumer)"},
	{"broker: JetStream store", "server.(*stream) server.(*fileStore) server.(*msgBlock) server.(*jetStream) server.(*Account).addStreamTemplate"},
	{"broker: client protocol and routing", "server.(*client) server.(*Sublist) server.(*Server)"},
}

// perfProfile is one process's samples over the window, by activity.
type perfProfile struct {
	Name    string  `json:"name"`
	Path    string  `json:"path"`
	Samples int     `json:"samples"`
	Split   []share `json:"by_activity"`
}

// perfRun is perf record attached to one process.
type perfRun struct {
	name, path string
	p          *harness.Proc
}

// startPerf attaches perf record to pid, writing to path.
func startPerf(name string, pid int, path string) (*perfRun, error) {
	p, err := harness.Start("perf "+name, "perf", []string{"record", "-q", "-F", "499", "-g", "-p", strconv.Itoa(pid), "-o", path}, harness.Options{})
	if err != nil {
		return nil, err
	}
	return &perfRun{name: name, path: path, p: p}, nil
}

// stop ends the recording and splits it.
func (r *perfRun) stop() (perfProfile, error) {
	_ = r.p.Signal(syscall.SIGINT)
	select {
	case <-r.p.Done():
	case <-time.After(30 * time.Second):
		r.p.Kill()
		return perfProfile{}, fmt.Errorf("perf record of %s did not stop:\n%s", r.name, r.p.Output())
	}
	out, err := exec.Command("perf", "script", "-i", r.path, "-F", "ip,sym").Output()
	if err != nil {
		return perfProfile{}, fmt.Errorf("perf script %s: %w", r.path, err)
	}
	n, split := splitPerf(out)
	return perfProfile{Name: r.name, Path: r.path, Samples: n, Split: split}, nil
}

// splitPerf reads perf script output (stacks of "addr symbol+off" lines,
// a blank line after each sample) and returns the samples and their shares
// by activity, largest first.
func splitPerf(out []byte) (int, []share) {
	by := map[string]int{}
	n := 0
	var frames []string
	flush := func() {
		if len(frames) > 0 {
			by[activityIn(perfActivities, frames, "other (kernel, runtime)")]++
			n++
		}
		frames = frames[:0]
	}
	s := bufio.NewScanner(bytes.NewReader(out))
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) == 0 {
			flush()
			continue
		}
		if len(f) >= 2 {
			frames = append(frames, f[1])
		}
	}
	flush()
	var split []share
	for k, v := range by {
		split = append(split, share{k, 100 * float64(v) / float64(max(n, 1))})
	}
	slices.SortFunc(split, func(a, b share) int {
		return cmp.Or(cmp.Compare(b.Percent, a.Percent), strings.Compare(a.Name, b.Name))
	})
	return n, split
}
