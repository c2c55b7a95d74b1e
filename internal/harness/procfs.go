package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ),
// 100 Hz on every Linux architecture Go runs on.
const clockTick = 10 * time.Millisecond

// CPUTime returns the user and system CPU time process pid has used, all
// its threads together, from /proc/PID/stat (10 ms resolution).
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime (fields 14 and 15) from a
// /proc/PID/stat line; the command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseStatCPU(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("harness: /proc stat line without a command name")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): utime is field 14, f[11].
	if len(f) < 13 {
		return 0, fmt.Errorf("harness: /proc stat line has %d fields", len(f)+2)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("harness: /proc stat times: %w", err)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// Status returns a kB field of /proc/PID/status (VmRSS:, VmHWM:) in bytes,
// 0 if it cannot be read.
func Status(pid int, key string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for l := range strings.Lines(string(b)) {
		if strings.HasPrefix(l, key) {
			f := strings.Fields(l[len(key):])
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// RSSWatch samples a process's peak RSS (VmHWM) until stopped; it kills the
// process when its RSS passes a limit, so that a runaway child cannot take
// the machine.
type RSSWatch struct {
	peak   int64
	killed atomic.Bool
	stop   context.CancelFunc
	done   chan struct{}
}

// WatchRSS starts sampling p every 100 ms; limit 0 never kills.
func WatchRSS(p *Proc, limit int64) *RSSWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &RSSWatch{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if hwm := Status(p.Pid(), "VmHWM:"); hwm > w.peak {
				w.peak = hwm
			}
			if limit > 0 && Status(p.Pid(), "VmRSS:") > limit && !p.Exited() {
				w.killed.Store(true)
				p.Kill()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-p.done:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Result stops the sampling and returns the peak and whether the limit was
// hit.
func (w *RSSWatch) Result() (peak int64, killed bool) {
	w.stop()
	<-w.done
	return w.peak, w.killed.Load()
}

// Killed reports whether the watch killed the process; it may be called
// while the watch runs.
func (w *RSSWatch) Killed() bool { return w.killed.Load() }
