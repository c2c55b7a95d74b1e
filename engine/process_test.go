package engine

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
)

func startSh(t *testing.T, script string) (*Process, *testutil.Buffer) {
	t.Helper()
	out := &testutil.Buffer{}
	p, err := StartProcess(ProcessConfig{Path: "sh", Args: []string{"-c", script}, Stdout: out, Stderr: out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(syscall.SIGKILL, 0) })
	return p, out
}

func waitDone(t *testing.T, p *Process, out *testutil.Buffer) Exit {
	t.Helper()
	select {
	case <-p.Done():
		return p.Exit()
	case <-time.After(10 * time.Second):
		t.Fatalf("child did not exit; output %q", out.String())
	}
	return Exit{}
}

func waitOutput(t *testing.T, out *testutil.Buffer, s string) {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(out.String(), s) {
			return fmt.Errorf("output %q lacks %q", out.String(), s)
		}
		return nil
	})
}

func TestProcessExitCodes(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   Exit
		text   string
	}{
		{"exits 0", "echo hello; exit 0", Exit{Code: 0}, "exited with code 0"},
		{"exits 3", "echo oops >&2; exit 3", Exit{Code: 3}, "exited with code 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, out := startSh(t, tt.script)
			if p.PID() <= 0 {
				t.Fatalf("pid %d", p.PID())
			}
			if got := waitDone(t, p, out); got != tt.want || got.String() != tt.text {
				t.Fatalf("exit %+v (%s), want %+v (%s); output %q", got, got, tt.want, tt.text, out.String())
			}
			if !strings.Contains(out.String(), "hello") && !strings.Contains(out.String(), "oops") {
				t.Fatalf("output not passed through: %q", out.String())
			}
		})
	}
}

func TestProcessKilledFromOutside(t *testing.T) {
	p, out := startSh(t, "echo up; exec sleep 60")
	waitOutput(t, out, "up")
	if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got := waitDone(t, p, out)
	if got.Signal != "killed" || got.Code != 137 || got.Killed {
		t.Fatalf("exit %+v, want signal killed, code 137", got)
	}
	if got.String() != "killed by signal killed" {
		t.Fatalf("exit text %q", got)
	}
}

func TestProcessStopForwardsSignal(t *testing.T) {
	p, out := startSh(t, `trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done`)
	waitOutput(t, out, "ready")
	got := p.Stop(syscall.SIGTERM, time.Minute)
	if got.Code != 7 || got.Killed {
		t.Fatalf("exit %+v, want code 7 from the child's own TERM handler; output %q", got, out.String())
	}
	waitOutput(t, out, "got TERM")
}

func TestProcessIgnoringTermIsKilledAfterGrace(t *testing.T) {
	p, out := startSh(t, `trap '' TERM; echo ready; while :; do sleep 0.05; done`)
	waitOutput(t, out, "ready")
	got := p.Stop(syscall.SIGTERM, 100*time.Millisecond)
	if !got.Killed || got.Signal != "killed" {
		t.Fatalf("exit %+v, want killed after the grace", got)
	}
	if !strings.Contains(got.String(), "after ignoring the stop signal") {
		t.Fatalf("exit text %q", got)
	}
}

func TestStartProcessErrors(t *testing.T) {
	if _, err := StartProcess(ProcessConfig{}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("empty path: %v", err)
	}
	if _, err := StartProcess(ProcessConfig{Path: "/nonexistent/engine"}); err == nil {
		t.Fatal("missing program started")
	}
}

// TestProcessStopSignalsTheGroup: the stop signal reaches the engine's own
// children too (vLLM's workers), not only the process that was started.
func TestProcessStopSignalsTheGroup(t *testing.T) {
	p, out := startSh(t, `sh -c 'trap "echo grandchild got TERM; exit 0" TERM; echo ready; while :; do sleep 0.05; done' &
trap 'wait; exit 7' TERM
wait`)
	waitOutput(t, out, "ready")
	got := p.Stop(syscall.SIGTERM, time.Minute)
	if got.Code != 7 || got.Killed {
		t.Fatalf("exit %+v, want code 7 after the grandchild ended; output %q", got, out.String())
	}
	waitOutput(t, out, "grandchild got TERM")
}

// TestProcessGrandchildDoesNotSurvive: whatever the engine started dies with
// it, whether it ends on its own or ignores the stop signal.
func TestProcessGrandchildDoesNotSurvive(t *testing.T) {
	tests := []struct {
		name   string
		script string
		stop   bool
	}{
		{"child exits on its own", `sleep 300 </dev/null >/dev/null 2>&1 & echo "gc=$!"; exit 3`, false},
		{"grandchild ignores the stop signal", `sh -c 'trap "" TERM; echo "gc=$$"; while :; do sleep 0.05; done' & wait`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, out := startSh(t, tt.script)
			waitOutput(t, out, "gc=")
			var gc int
			if _, err := fmt.Sscanf(out.String()[strings.Index(out.String(), "gc="):], "gc=%d", &gc); err != nil {
				t.Fatalf("output %q: %v", out.String(), err)
			}
			t.Cleanup(func() { _ = syscall.Kill(gc, syscall.SIGKILL) })
			if tt.stop {
				p.Stop(syscall.SIGTERM, time.Minute)
			} else {
				waitDone(t, p, out)
			}
			checkFor(t, 10*time.Second, func() error {
				if alive(gc) {
					return fmt.Errorf("grandchild %d still running after the child ended (%s)", gc, p.Exit())
				}
				return nil
			})
		})
	}
}

// alive reports whether pid is a running process (a zombie is not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}
