package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
)

// TestTwoQueensOneDataDir: a second queen on a data directory another one
// uses is refused with a clear message, and the first runs on.
func TestTwoQueensOneDataDir(t *testing.T) {
	dir := t.TempDir()
	ports := testutil.FreePorts(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var first testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"queen", "--data", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]), "--http", "off"},
			strings.NewReader(""), &first, &first)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(first.String(), "accepting heartbeats") {
		select {
		case code := <-done:
			t.Fatalf("first queen exited %d: %s", code, first.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("first queen not up: %s", first.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	code, _, stderr := run(t, sctx, "", "queen", "--data", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", ports[1]), "--http", "off")
	if code == 0 || !strings.Contains(stderr, "data directory in use") {
		t.Fatalf("second queen on the same data: exit %d, stderr %q", code, stderr)
	}
	select {
	case code := <-done:
		t.Fatalf("the first queen exited %d when the second was refused: %s", code, first.String())
	default:
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("first queen exit %d on stop: %s", code, first.String())
	}
}

// TestQueenNamesInheritedNATSURL: with NATS_URL exported the queen starts no
// broker of its own; its first log line and its wait message say so and
// name the variable.
func TestQueenNamesInheritedNATSURL(t *testing.T) {
	port := testutil.FreePorts(t, 1)[0] // nothing listens there
	t.Setenv("NATS_URL", fmt.Sprintf("nats://rbee:secret@127.0.0.1:%d", port))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"queen", "--data", t.TempDir(), "--http", "off"}, strings.NewReader(""), &out, &out)
	}()
	testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(out.String(), "no NATS server answers yet") {
			return fmt.Errorf("no wait message yet:\n%s", out.String())
		}
		return nil
	})
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d:\n%s", code, out.String())
	}
	lines := strings.Split(out.String(), "\n")
	if !strings.Contains(lines[0], "NATS_URL from the environment") || !strings.Contains(lines[0], "no embedded broker") {
		t.Fatalf("first log line does not name NATS_URL:\n%s", out.String())
	}
	if !strings.Contains(lines[1], "at NATS_URL from the environment") || !strings.Contains(lines[1], "unset NATS_URL") {
		t.Fatalf("wait message does not name NATS_URL:\n%s", out.String())
	}
	if strings.Contains(out.String(), "secret") {
		t.Fatalf("the password is logged:\n%s", out.String())
	}
}

// TestQueenPprof: --pprof serves the runtime's profiles on a listener of
// its own; the heap profile is a real one (gzip-compressed protobuf).
func TestQueenPprof(t *testing.T) {
	ports := testutil.FreePorts(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testutil.Buffer
	done := make(chan int, 1)
	paddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	go func() {
		done <- Main(ctx, []string{"queen", "--data", t.TempDir(), "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]),
			"--http", "off", "--pprof", paddr}, strings.NewReader(""), &out, &out)
	}()
	var body []byte
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get("http://" + paddr + "/debug/pprof/heap")
		if err != nil {
			return fmt.Errorf("%v\n%s", err, out.String())
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		body, err = io.ReadAll(resp.Body)
		return err
	})
	if len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
		t.Fatalf("heap profile is not gzip: %q", body[:min(len(body), 32)])
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d:\n%s", code, out.String())
	}
}

// TestQueenMemoryLimit: unless GOMEMLIMIT is set, the queen's heap has a
// soft limit of two fifths of the machine's memory.
func TestQueenMemoryLimit(t *testing.T) {
	prevGC, prevLimit := debug.SetGCPercent(100), debug.SetMemoryLimit(-1)
	defer func() { debug.SetGCPercent(prevGC); debug.SetMemoryLimit(prevLimit) }()
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	total := memoryAvailable()
	if total <= 0 {
		t.Fatal("the machine's memory cannot be read")
	}
	queenGC()
	if got, want := debug.SetMemoryLimit(-1), int64(float64(total)*queenMemoryShare); got != want {
		t.Fatalf("memory limit %d, want %d (two fifths of %d)", got, want, total)
	}
	debug.SetMemoryLimit(prevLimit)
	t.Setenv("GOMEMLIMIT", "1GiB")
	queenGC()
	if got := debug.SetMemoryLimit(-1); got != prevLimit {
		t.Fatalf("GOMEMLIMIT set, yet the queen changed the limit to %d", got)
	}
}
