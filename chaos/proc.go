package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildRbee builds cmd/rbee into dir and returns the binary's path.
func buildRbee(dir string) (string, error) {
	bin := filepath.Join(dir, "rbee")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/rbee")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/rbee: %v\n%s", err, out)
	}
	return bin, nil
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// proc is a child process whose output is counted and whose last lines are
// kept for the report.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}

	mu    sync.Mutex
	tail  []string // the last tailLines lines of stdout and stderr
	lines int
	grep  map[string]int // counts of lines containing each pattern
}

const tailLines = 40

// startProc starts name with args; patterns are lower-case substrings whose
// lines are counted, whatever their case.
func startProc(label, name string, args []string, patterns ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	p := &proc{name: label, cmd: cmd, done: make(chan struct{}), grep: map[string]int{}}
	for _, s := range patterns {
		p.grep[s] = 0
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 1<<20), 1<<20)
		for s.Scan() {
			line := s.Text()
			p.mu.Lock()
			p.lines++
			low := strings.ToLower(line)
			for pat := range p.grep {
				if strings.Contains(low, pat) {
					p.grep[pat]++
				}
			}
			if len(p.tail) == tailLines {
				copy(p.tail, p.tail[1:])
				p.tail = p.tail[:tailLines-1]
			}
			p.tail = append(p.tail, line)
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		<-read
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process.
func (p *proc) signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// stop sends SIGTERM and waits up to grace, then kills.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.signal(syscall.SIGCONT)
	_ = p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// kill sends SIGKILL and waits for the end.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// count returns how many output lines contained pat, and all lines.
func (p *proc) count(pat string) (n, all int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.grep[pat], p.lines
}

// output returns the last lines of output.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// procStatus returns a field of /proc/<pid>/status in bytes (the kB fields).
func procStatus(pid int, key string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
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

// rssWatch samples a process's peak RSS (VmHWM) until stopped; it kills the
// process when its RSS passes limit, so a runaway queen cannot take the machine.
type rssWatch struct {
	peak   int64
	killed bool
	stop   context.CancelFunc
	done   chan struct{}
}

func watchRSS(p *proc, limit int64) *rssWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &rssWatch{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if hwm := procStatus(p.pid(), "VmHWM:"); hwm > w.peak {
				w.peak = hwm
			}
			if limit > 0 && procStatus(p.pid(), "VmRSS:") > limit && !p.exited() {
				w.killed = true
				p.kill()
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

// result stops the sampling and returns the peak and whether the limit was hit.
func (w *rssWatch) result() (peak int64, killed bool) {
	w.stop()
	<-w.done
	return w.peak, w.killed
}
