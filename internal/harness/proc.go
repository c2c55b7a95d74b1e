package harness

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options are what Start may do beyond running the program.
type Options struct {
	// Patterns are lower-case substrings; Count says how many output lines
	// contained each, whatever their case.
	Patterns []string
	// OnLine, when set, is called with every line of output, in order, from
	// one goroutine; it must not block for long.
	OnLine func(line string)
	// Env, when set, is added to this process's environment.
	Env []string
}

// Proc is a child process whose output is read line by line; its last lines
// are kept for error messages. Its methods may be called concurrently.
type Proc struct {
	// Name labels the process in errors.
	Name string

	cmd  *exec.Cmd
	done chan struct{}

	mu    sync.Mutex
	tail  []string // the last tailLines lines of stdout and stderr
	lines int
	grep  map[string]int
}

const tailLines = 40

// Start starts program with args in its own process group, killed if this
// process dies, and returns it running; its stdout and stderr are read
// together.
func Start(label, program string, args []string, opt Options) (*Proc, error) {
	cmd := exec.Command(program, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A grandchild holding the output open must not hold Wait for ever.
	cmd.WaitDelay = 2 * time.Second
	if len(opt.Env) > 0 {
		cmd.Env = append(cmd.Environ(), opt.Env...)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	p := &Proc{Name: label, cmd: cmd, done: make(chan struct{}), grep: map[string]int{}}
	for _, s := range opt.Patterns {
		p.grep[s] = 0
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 1<<20), 1<<20)
		for s.Scan() {
			line := s.Text()
			if opt.OnLine != nil {
				opt.OnLine(line)
			}
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

// Pid returns the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has ended and its output is read.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode returns the exit code of an ended process, -1 if it was killed
// by a signal or has not ended.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM (after a SIGCONT, in case it is stopped) and waits up
// to grace, then kills it.
func (p *Proc) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.Kill()
	}
}

// Kill sends SIGKILL to the process and its process group, and waits for
// the end.
func (p *Proc) Kill() {
	if !p.Exited() {
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Count returns how many output lines contained pat (one of
// Options.Patterns), and how many lines there were in all.
func (p *Proc) Count(pat string) (n, all int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.grep[pat], p.lines
}

// Output returns the last lines of output.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}
