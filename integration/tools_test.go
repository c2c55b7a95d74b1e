package integration

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	rbeeOnce sync.Once
	rbeeDir  string
	rbeeErr  error
)

// rbeeBinary builds cmd/rbee once per test run and returns the folder holding it.
func rbeeBinary(t *testing.T) string {
	t.Helper()
	rbeeOnce.Do(func() {
		rbeeDir, rbeeErr = os.MkdirTemp("", "rbee-bin-")
		if rbeeErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(rbeeDir, "rbee"), "../cmd/rbee")
		out, err := cmd.CombinedOutput()
		if err != nil {
			rbeeErr = &buildError{string(out)}
		}
	})
	if rbeeErr != nil {
		t.Fatalf("build rbee: %v", rbeeErr)
	}
	return rbeeDir
}

type buildError struct{ out string }

func (e *buildError) Error() string { return e.out }

// lines collects a running program's output line by line.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) read(r io.Reader) {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		l.mu.Lock()
		l.all = append(l.all, s.Text())
		l.mu.Unlock()
	}
}

func (l *lines) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// String is the output so far, read when it is formatted: passed to a
// failure message as %s, it shows the output at the failure, not at the call.
func (l *lines) String() string { return l.text() }

func (l *lines) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.all...)
}

// start runs a program in the background, collecting stdout and stderr
// together, and kills it at cleanup.
func start(t *testing.T, env []string, name string, args ...string) *lines {
	t.Helper()
	out, _ := startKillable(t, env, name, args...)
	return out
}

// startKillable is start with a handle that kills the program at once and
// returns when its output is read to the end; calling it again is harmless.
func startKillable(t *testing.T, env []string, name string, args ...string) (*lines, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	out := &lines{}
	done := make(chan struct{})
	go func() { out.read(pr); close(done) }()
	go func() { _ = cmd.Wait(); pw.Close() }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return out, stop
}
