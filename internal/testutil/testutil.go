// Package testutil holds test helpers shared by the packages and the
// integration tests: a real in-process nats-server and condition polling.
package testutil

import (
	"bytes"
	"log/slog"
	"net"
	"os"
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

// Eventually polls cond every 10 ms until it returns true or timeout passes,
// then fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
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
