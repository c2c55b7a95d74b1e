package embedded

import (
	"bytes"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// checkFor polls f until it returns nil, failing the test with f's last error
// once total has passed.
func checkFor(t testing.TB, total time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %s: %v", total, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testConfig is a loopback server on a free port storing under a fresh
// directory, with its log in the test's output.
func testConfig(t testing.TB) Config {
	t.Helper()
	c := DefaultConfig(t.TempDir())
	c.Port = -1
	c.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return c
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func startServer(t testing.TB, c Config) *Server {
	t.Helper()
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

func connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// advisories collects the connect and disconnect advisories nc receives for
// account.
type advisories struct {
	mu   sync.Mutex
	seen []ConnAdvisory
	bad  []string
}

func watchAdvisories(t testing.TB, nc *nats.Conn, account string) *advisories {
	t.Helper()
	a := &advisories{}
	connect, disconnect := AdvisorySubjects(account)
	for _, subj := range []string{connect, disconnect} {
		if _, err := nc.Subscribe(subj, func(m *nats.Msg) {
			adv, err := ParseConnAdvisory(m.Data)
			a.mu.Lock()
			defer a.mu.Unlock()
			if err != nil {
				a.bad = append(a.bad, string(m.Data))
				return
			}
			a.seen = append(a.seen, adv)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return a
}

// find returns the advisory of type typ for conn, or an error listing what
// was seen.
func (a *advisories) find(typ, conn string) (ConnAdvisory, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, adv := range a.seen {
		if adv.Type == typ && adv.ConnID() == conn {
			return adv, nil
		}
	}
	var seen []string
	for _, adv := range a.seen {
		seen = append(seen, adv.Type+" "+adv.ConnID()+" "+adv.Reason)
	}
	return ConnAdvisory{}, fmt.Errorf("no %s for %s; seen %q, undecodable %q", typ, conn, seen, a.bad)
}
