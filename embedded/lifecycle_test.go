package embedded

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Shutdown may race Shutdown and every accessor; the second Shutdown returns
// at once. Run with -race.
func TestServerShutdownRacesAccessors(t *testing.T) {
	s := startServer(t, testConfig(t))
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				_ = s.ClientURL()
				_ = s.NATS()
				_, _ = s.Refusals()
				_ = s.JetStreamEnabled()
				_, _ = s.EnsureJetStream()
			}
		}()
	}
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); s.Shutdown() }()
	}
	wg.Wait()
	s.Shutdown()
	if s.NATS().Running() {
		t.Fatal("server still running after Shutdown")
	}
	// The directory is free again.
	c := testConfig(t)
	startServer(t, c).Shutdown()
}

// Restarting JetStream while another goroutine shuts the server down leaves
// no goroutine behind and no data race.
func TestRestartJetStreamRacesShutdown(t *testing.T) {
	s := startServer(t, testConfig(t))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = s.RestartJetStream() }()
	go func() { defer wg.Done(); s.Shutdown() }()
	wg.Wait()
	if err := s.RestartJetStream(); err == nil {
		t.Fatal("RestartJetStream after Shutdown succeeded")
	}
}

// nats-server's start-up notices, the JetStream banner among them, go at
// debug; its warnings stay.
func TestServerLogLevels(t *testing.T) {
	var buf syncBuffer
	c := testConfig(t)
	c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s := startServer(t, c)
	s.Shutdown()
	out := buf.String()
	for _, banner := range []string{"Starting nats-server", "JetStream", "Server is ready"} {
		if strings.Contains(out, banner) {
			t.Fatalf("%q logged at info or above:\n%s", banner, out)
		}
	}
	l := slogLogger{l: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	l.Warnf("a warning %d", 1)
	l.Noticef("%s - Slow Consumer Detected: WriteDeadline of %v exceeded", "cid:5", "3s")
	l.Noticef("Listening for client connections on %s", "127.0.0.1:4222")
	out = buf.String()
	if !strings.Contains(out, "level=WARN msg=\"a warning 1\"") || !strings.Contains(out, "level=WARN msg=\"cid:5 - Slow Consumer") {
		t.Fatalf("warnings missing:\n%s", out)
	}
	if strings.Contains(out, "Listening for client") {
		t.Fatalf("a notice logged at info:\n%s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
