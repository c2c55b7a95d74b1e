package engine

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// DefaultStopGrace is how long a child may take to exit after the signal
// that asks it to stop before it is killed: Kubernetes' default
// terminationGracePeriodSeconds, and more than vLLM or llama-server need to
// drain in-flight requests.
const DefaultStopGrace = 30 * time.Second

// ProcessConfig configures a supervised child process.
type ProcessConfig struct {
	// Path and Args are the program and its arguments (Args without the
	// program name). A Path without a slash is looked up in $PATH.
	Path string
	Args []string
	// Stdout and Stderr receive the child's output as it comes; nil discards.
	Stdout, Stderr io.Writer
	// Env is the child's environment; nil inherits this process's.
	Env []string
}

// Exit says how a child process ended.
type Exit struct {
	// Code is the exit status, or 128 + the signal number when a signal
	// killed it (the shell's convention), or -1 when it could not be waited for.
	Code int
	// Signal names the signal that killed the child; empty when it exited.
	Signal string
	// Killed is true when the child was killed after ignoring the stop
	// signal for the grace.
	Killed bool
}

// String describes e in a few words: "exited with code 3", "killed by
// signal killed".
func (e Exit) String() string {
	s := fmt.Sprintf("exited with code %d", e.Code)
	if e.Signal != "" {
		s = "killed by signal " + e.Signal
	}
	if e.Killed {
		s += " after ignoring the stop signal"
	}
	return s
}

// Process is a running child, the leader of a process group of its own:
// signals go to the whole group, and whatever of the group outlives the
// child is killed when it exits, so no grandchild survives as an orphan
// holding GPU memory. Its methods may be called concurrently.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}

	mu     sync.Mutex
	exit   Exit
	killed bool
}

// StartProcess starts the child. It returns an error wrapping
// ErrInvalidConfig for an empty Path, or the exec error when the program
// cannot be started.
func StartProcess(cfg ProcessConfig) (*Process, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("%w: no program to run", ErrInvalidConfig)
	}
	cmd := exec.Command(cfg.Path, cfg.Args...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr, cmd.Env = cfg.Stdout, cfg.Stderr, cfg.Env
	// A grandchild holding the output pipes must not keep Wait from
	// returning once the child has exited; it is killed right after.
	cmd.WaitDelay = time.Second
	ownGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Path, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

func (p *Process) wait() {
	err := p.cmd.Wait()
	// What the child left behind in its group dies with it.
	_ = signalGroup(p.cmd.Process.Pid, syscall.SIGKILL)
	e := Exit{Code: -1}
	var ee *exec.ExitError
	if err == nil || errors.As(err, &ee) {
		st := p.cmd.ProcessState
		e.Code = st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal().String()
			e.Code = 128 + int(ws.Signal())
		}
	}
	p.mu.Lock()
	e.Killed = p.killed
	p.exit = e
	p.mu.Unlock()
	close(p.done)
}

// PID returns the child's process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done returns a channel closed once the child has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exit returns how the child ended; it is meaningful once Done is closed.
func (p *Process) Exit() Exit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

// Signal sends sig to the child's process group; it returns nil if the
// child has already exited.
func (p *Process) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := signalGroup(p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// Stop sends sig to the child's process group and waits for the child to
// exit; a child still running after grace is killed (SIGKILL) with its
// group. It returns how the child ended.
func (p *Process) Stop(sig os.Signal, grace time.Duration) Exit {
	_ = p.Signal(sig)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.mu.Lock()
		p.killed = true
		p.mu.Unlock()
		_ = signalGroup(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	return p.Exit()
}
