// Package testutil holds test helpers shared by the packages and the
// integration tests: a real in-process nats-server and condition polling.
package testutil

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/embedded"
)

// Logger returns a slog logger that writes to the test log at debug level
// when RBEE_TEST_LOG is set, and discards otherwise.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("RBEE_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// Server starts an embedded nats-server with JetStream on a random loopback
// port, storing in a temporary directory, and shuts it down at cleanup.
func Server(t testing.TB) *embedded.Server {
	t.Helper()
	return ServerIn(t, t.TempDir())
}

// ServerIn is Server with an explicit store directory (to restart a server on
// the same data).
func ServerIn(t testing.TB, dir string) *embedded.Server {
	t.Helper()
	c := embedded.DefaultConfig(dir)
	c.Port = -1
	s, err := embedded.New(c)
	if err != nil {
		t.Fatalf("embedded server: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// Connect opens a plain connection to url and closes it at cleanup.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// CheckFor calls f every sleep until it returns nil, for at most total, as
// nats-server's checkFor does. At the deadline it fails the test with the
// last error f returned, which should say what state was seen and what was
// wanted. It returns as soon as f succeeds; f runs at least once.
func CheckFor(t testing.TB, total, sleep time.Duration, f func() error) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %s (%d ms): %v", total, time.Since(start).Milliseconds(), err)
		}
		time.Sleep(sleep)
	}
}

// Eventually polls cond every 10 ms until it returns true or timeout passes,
// then fails the test with msg. Prefer CheckFor, whose condition can say what
// it saw.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	CheckFor(t, timeout, 10*time.Millisecond, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf(msg, args...)
	})
}

// Recv returns the next value from ch, or fails the test with what if none
// arrives within timeout.
func Recv[T any](t testing.TB, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("no %s within %s", what, timeout)
	}
	panic("unreachable")
}

// Buffer is a bytes.Buffer safe for one writer (a logger, a program's
// output) and a concurrent reader (a test polling it).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// FreePorts returns n loopback TCP ports that were free a moment ago. They
// are held open together so that the n are distinct.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// RequireTool returns the path of an external program the README's test
// command (./scripts/test.sh, through ./scripts/tools.sh) installs. Under that
// command (RBEE_REQUIRE_TOOLS=1) a missing tool fails the test; a plain
// `go test ./...` skips it with the reason.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("RBEE_REQUIRE_TOOLS") != "" {
		t.Fatalf("%s not found on PATH: run ./scripts/test.sh, which installs it", name)
	}
	t.Skipf("%s not on PATH (./scripts/test.sh installs it)", name)
	return ""
}
