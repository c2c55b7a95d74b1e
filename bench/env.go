package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/natsconn"
)

// machine describes where the numbers were taken.
type machine struct {
	NProc     int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	RAM       string `json:"ram"`
	GoVersion string `json:"go_version"`
	OSArch    string `json:"os_arch"`
	Kernel    string `json:"kernel"`
}

func describeMachine() machine {
	m := machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version(), OSArch: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if kb := procField("/proc/meminfo", "MemTotal:"); kb > 0 {
		m.RAM = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// procField returns the number after key in a /proc file of "Key: N kB" lines, or 0.
func procField(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), key); ok {
			fs := strings.Fields(rest)
			if len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// rssBytes returns the resident set size of pid ("self" for this process).
func rssBytes(pid string) int64 { return procField("/proc/"+pid+"/status", "VmRSS:") << 10 }

// processCPU returns this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pidCPU returns the user+system CPU time of another process from
// /proc/PID/stat (clock ticks of 10 ms).
func pidCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// heap returns the live heap after a full collection that also returns free
// memory to the OS, so that RSS read next is comparable too.
func heap() uint64 {
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// broker is a nats-server with JetStream on a loopback port, in this process
// or in a child process running this same program.
type broker struct {
	URL  string
	PID  int // the child's pid; 0 in-process
	stop func()
}

func (b *broker) Stop() { b.stop() }

// startBroker starts an embedded broker storing under dir, in-process or as
// a child process.
func startBroker(dir string, child bool) (*broker, error) {
	if !child {
		c := embedded.DefaultConfig(dir)
		c.Port = -1
		s, err := embedded.New(c)
		if err != nil {
			return nil, err
		}
		return &broker{URL: s.ClientURL(), stop: s.Shutdown}, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-broker-child", dir)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		_ = in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return nil, fmt.Errorf("child broker: %w", err)
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "URL ")
	if !ok {
		stop()
		return nil, fmt.Errorf("child broker said %q", line)
	}
	return &broker{URL: url, PID: cmd.Process.Pid, stop: stop}, nil
}

// serveChildBroker runs the broker of a child process: it prints its URL and
// serves until its stdin closes (the parent stopped it or exited).
func serveChildBroker(dir string) error {
	c := embedded.DefaultConfig(dir)
	c.Port = -1
	s, err := embedded.New(c)
	if err != nil {
		return err
	}
	defer s.Shutdown()
	fmt.Printf("URL %s\n", s.ClientURL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// connect opens a connection like every rbee role does; errs counts the
// asynchronous errors (slow consumer) the server or client reported.
func connect(url, name string, errs *asyncErrors) (*nats.Conn, error) {
	c := natsconn.DefaultConfig(url, name)
	if errs != nil {
		c.OnAsyncError = errs.add
	}
	return natsconn.Connect(c)
}

// asyncErrors counts asynchronous connection errors.
type asyncErrors struct {
	mu    sync.Mutex
	n     int
	first error
}

func (a *asyncErrors) add(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n++
	if a.first == nil {
		a.first = err
	}
}

func (a *asyncErrors) err() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == 0 {
		return nil
	}
	return fmt.Errorf("%d async errors, first: %w", a.n, a.first)
}

// flush waits for the server to process everything sent on nc.
func flush(nc *nats.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return natsconn.Flush(ctx, nc)
}
