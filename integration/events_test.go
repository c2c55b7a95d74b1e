package integration

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	evhistory "github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/subjects"
)

// startHistoryQueen starts a queen whose registry events also go to the
// event stream, as rbee queen does.
func startHistoryQueen(t *testing.T, url string, ttl time.Duration) *queen.Queen {
	t.Helper()
	nc := conn(t, url, "queen")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := evhistory.EnsureStream(ctx, js, subjects.Default(), evhistory.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	pc := evhistory.DefaultConfig("queen-it")
	pc.Logger = testutil.Logger(t)
	p, err := evhistory.NewPublisher(js, pc)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(context.Background()) })
	cfg := queen.DefaultConfig()
	cfg.Missed = missedOf(ttl)
	cfg.Logger, cfg.OnEvent = testutil.Logger(t), p.OnEvent
	q, err := queen.New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	return q
}

// rbeeRun runs the rbee binary with args and returns its exit code and
// output; it fails the test if rbee does not exit within 30 s.
func rbeeRun(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(rbeeBinary(t), "rbee"), args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("rbee %v did not exit: %s", args, out)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("rbee %v: %v", args, err)
	return 0, ""
}

// TestCheckProcess runs rbee check as a probe would: its exit status is
// the answer.
func TestCheckProcess(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()
	startQueen(t, url, 2*time.Second)
	w := startWorker(t, conn(t, url, "workers"), "h1", "w1", 100*time.Millisecond)
	var code int
	var out string
	deadline := time.Now().Add(10 * time.Second)
	for code, out = rbeeRun(t, "check", "worker", "h1.w1", "--nats-url", url); code != 0; code, out = rbeeRun(t, "check", "worker", "h1.w1", "--nats-url", url) {
		if time.Now().After(deadline) {
			t.Fatalf("worker never alive: exit %d %s", code, out)
		}
	}
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "alive") {
		t.Fatalf("alive: %q", out)
	}
	if code, out := rbeeRun(t, "check", "worker", "h1.nobody", "--nats-url", url); code != 1 || !strings.Contains(out, "not in the registry") {
		t.Fatalf("absent: exit %d %q", code, out)
	}
	if code, out := rbeeRun(t, "check", "worker", "no-dot", "--nats-url", url); code != 2 {
		t.Fatalf("bad input: exit %d %q", code, out)
	}
	w.Abandon()
	deadline = time.Now().Add(10 * time.Second)
	for code, out = rbeeRun(t, "check", "worker", "h1.w1", "--nats-url", url); code != 1; code, out = rbeeRun(t, "check", "worker", "h1.w1", "--nats-url", url) {
		if time.Now().After(deadline) {
			t.Fatalf("killed worker still answered alive: exit %d %s", code, out)
		}
	}
}

// TestEventHistoryTools reads the event history as an operator would: rbee
// events for one machine, and nats sub --translate 'rbee decode' live.
func TestEventHistoryTools(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()
	startHistoryQueen(t, url, 2*time.Second)
	nc := conn(t, url, "workers")
	w := startWorker(t, nc, "h1", "w1", 100*time.Millisecond)
	startWorker(t, nc, "h2", "w1", 100*time.Millisecond)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, out := rbeeRun(t, "events", "--nats-url", url)
		return strings.Contains(out, "joined") && strings.Contains(out, "h1.w1") && strings.Contains(out, "h2.w1")
	}, "events of both workers")
	if err := w.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	var lines []map[string]any
	testutil.Eventually(t, 10*time.Second, func() bool {
		code, out := rbeeRun(t, "events", "--nats-url", url, "--hive", "h1", "--since", "24h", "--json")
		lines = nil
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var m map[string]any
			if code != 0 || json.Unmarshal([]byte(l), &m) != nil {
				return false
			}
			lines = append(lines, m)
		}
		return len(lines) == 2
	}, "joined and left of h1.w1: %v", lines)
	if lines[0]["event"] != "joined" || lines[1]["event"] != "left" || lines[1]["key"] != "h1.w1" || lines[1]["queen_id"] != "queen-it" {
		t.Fatalf("h1 history: %v", lines)
	}

	natsBin := testutil.RequireTool(t, "nats")
	env := []string{"HOME=" + t.TempDir(), "PATH=" + rbeeBinary(t) + string(os.PathListSeparator) + os.Getenv("PATH"), "NATS_CONTEXT="}
	sub := start(t, env, natsBin, "--server", url, "sub", "rbee.evt.>", "--translate", "rbee decode", "--count", "1")
	testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(sub.text(), "Subscribing") }, "nats sub ready:\n%s", sub)
	startWorker(t, nc, "h3", "w9", 100*time.Millisecond)
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, l := range sub.snapshot() {
			var m map[string]any
			if json.Unmarshal([]byte(strings.TrimSpace(l)), &m) == nil && m["event"] == "joined" && m["key"] == "h3.w9" {
				return true
			}
		}
		return false
	}, "nats sub --translate 'rbee decode' shows the joined event as JSON:\n%s", sub)
	if !strings.Contains(sub.text(), "rbee.evt.joined.h3.w9") {
		t.Fatalf("nats sub does not show the event subject:\n%s", sub)
	}
}
