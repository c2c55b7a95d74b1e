package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
)

// TestAgentsSayNoQueen: a hive and a worker beating into a server no queen
// keeps say so once, after noQueenIntervals of their intervals, and say
// again when a queen comes.
func TestAgentsSayNoQueen(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()
	t.Setenv("NATS_URL", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agents := map[string][]string{
		"hive":   {"hive", "--nats-url", url, "--hive-id", "h1", "--interval", "100ms"},
		"worker": {"worker", "--nats-url", url, "--hive-id", "h1", "--worker-id", "w1", "--interval", "100ms"},
	}
	outs := map[string]*testutil.Buffer{}
	done := make(chan int, len(agents)+1)
	for name, args := range agents {
		out := &testutil.Buffer{}
		outs[name] = out
		go func() { done <- Main(ctx, args, strings.NewReader(""), out, out) }()
	}
	const warn, back = "no queen has taken these beats", "a queen keeps the registry again"
	for name, out := range outs {
		testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			if !strings.Contains(out.String(), warn) {
				return fmt.Errorf("%s has not said there is no queen:\n%s", name, out)
			}
			return nil
		})
	}
	var qout testutil.Buffer
	go func() {
		done <- Main(ctx, []string{"queen", "--nats-url", url, "--http", "off", "--data", t.TempDir()}, strings.NewReader(""), &qout, &qout)
	}()
	for name, out := range outs {
		testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			if !strings.Contains(out.String(), back) {
				return fmt.Errorf("%s has not seen the queen come:\n%s\nqueen:\n%s", name, out, qout.String())
			}
			return nil
		})
		if n := strings.Count(out.String(), warn); n != 1 {
			t.Fatalf("%s said %d times that there is no queen:\n%s", name, n, out)
		}
	}
	cancel()
	for range len(agents) + 1 {
		if code := <-done; code != 0 {
			t.Fatalf("exit %d\nhive:\n%s\nworker:\n%s\nqueen:\n%s", code, outs["hive"], outs["worker"], qout.String())
		}
	}
}
