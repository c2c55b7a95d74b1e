package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// checkFor polls f until it returns nil, failing with its last error at the
// deadline (testutil.CheckFor).
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, 20*time.Millisecond, f)
}

// workerLiveness returns a worker entry's liveness (alive when absent) and
// the entry, or an error when there is none.
func workerLiveness(t *testing.T, url, key string) (wire.Liveness, *wire.WorkerEntry, error) {
	wkv, _ := kvs(t, url)
	e := getWorker(wkv, key)
	if e == nil {
		return "", nil, fmt.Errorf("%s: no entry", key)
	}
	if e.Liveness == "" {
		return wire.LivenessAlive, e, nil
	}
	return e.Liveness, e, nil
}

// startWorkerProcess starts `rbee worker` for hive h, worker w as a child
// process and waits until its entry is in the registry.
func startWorkerProcess(t *testing.T, url, h, w string, interval time.Duration) (*exec.Cmd, *lines) {
	t.Helper()
	bin := rbeeBinary(t)
	cmd := exec.Command(filepath.Join(bin, "rbee"), "worker", "--nats-url", url, "--hive-id", h, "--worker-id", w, "--interval", interval.String())
	out := &lines{}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() { out.read(pr); close(read) }()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); pw.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-exited
		<-read
	})
	checkFor(t, 20*time.Second, func() error {
		_, _, err := workerLiveness(t, url, h+"."+w)
		if err != nil {
			return fmt.Errorf("%w; worker output:\n%s", err, out.text())
		}
		return nil
	})
	return cmd, out
}

// TestCrashIsDisconnected: a worker process killed with SIGKILL is marked
// disconnected from the server's DISCONNECT advisory, long before its TTL,
// and then expires at its TTL: the mark keeps the original expiry, never
// earlier.
func TestCrashIsDisconnected(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()
	_, ev := startQueen(t, url, 3*time.Second)
	cmd, _ := startWorkerProcess(t, url, "hive-1", "crashy", time.Second)
	key := "hive-1.crashy"
	_, last, _ := workerLiveness(t, url, key)
	if last.Conn == "" {
		t.Fatalf("the worker's beat names no connection: %+v", last)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var marked time.Duration
	checkFor(t, 10*time.Second, func() error {
		l, e, err := workerLiveness(t, url, key)
		if err != nil {
			return err
		}
		if l != wire.LivenessDisconnected {
			return fmt.Errorf("%s liveness %s, want disconnected", key, l)
		}
		marked, last = time.Since(killed), e
		return nil
	})
	checkFor(t, 5*time.Second, func() error { // the watch follows the store
		if _, ok := ev.find(registry.Disconnected, key); !ok {
			return fmt.Errorf("no disconnected event for %s", key)
		}
		return nil
	})
	checkFor(t, 15*time.Second, func() error {
		if _, ok := ev.find(registry.Expired, key); !ok {
			return fmt.Errorf("%s not expired yet (%s after the kill)", key, time.Since(killed))
		}
		return nil
	})
	exp, _ := ev.find(registry.Expired, key)
	due := time.UnixMilli(last.ReceivedAtMs).Add(3 * time.Second)
	if exp.At.Before(due.Add(-10 * time.Millisecond)) {
		t.Fatalf("expired at %s, before its TTL ran out at %s", exp.At.Format(time.StampMilli), due.Format(time.StampMilli))
	}
	t.Logf("SIGKILL → disconnected in KV after %s; expired %s after its last beat (TTL 3s)", marked,
		exp.At.Sub(time.UnixMilli(last.ReceivedAtMs)))
}

// TestFrozenWorkerIsDisconnected: a SIGSTOPped worker beating every 10 s is
// dropped by the embedded broker's pings and marked disconnected before its
// 30 s TTL; resumed, it reconnects, beats at once and is alive again.
func TestFrozenWorkerIsDisconnected(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()
	_, ev := startQueen(t, url, 30*time.Second)
	cmd, out := startWorkerProcess(t, url, "hive-1", "frozen", 10*time.Second)
	key := "hive-1.frozen"
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	checkFor(t, 25*time.Second, func() error {
		if _, ok := ev.find(registry.Expired, key); ok {
			return errors.New("expired before it was marked disconnected")
		}
		l, _, err := workerLiveness(t, url, key)
		if err != nil {
			return err
		}
		if l != wire.LivenessDisconnected {
			return fmt.Errorf("liveness %s %s after SIGSTOP", l, time.Since(stopped))
		}
		return nil
	})
	marked := time.Since(stopped)
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error {
		if _, ok := ev.find(registry.Reconnected, key); !ok {
			return fmt.Errorf("no reconnected event after SIGCONT; worker output:\n%s", out.text())
		}
		return nil
	})
	if n := ev.count(registry.Expired, key); n != 0 {
		t.Fatalf("the frozen worker expired %d times", n)
	}
	t.Logf("SIGSTOP → disconnected after %s (TTL 30s); SIGCONT → reconnected", marked)
}

// TestOwnIntervals: workers at 1 s and 2 s and a hive at 1 s share one
// system; each expires at 3 × its own interval, never earlier.
func TestOwnIntervals(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()
	_, ev := startQueen(t, url, 0)
	fast := startWorker(t, conn(t, url, "fast"), "hive-1", "fast", time.Second)
	slow := startWorker(t, conn(t, url, "slow"), "hive-1", "slow", 2*time.Second)
	hc := hive.DefaultConfig("hive-1")
	hc.Interval, hc.Version = time.Second, "test"
	h, err := hive.New(conn(t, url, "hive"), hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
	checkFor(t, 15*time.Second, func() error {
		for _, k := range []string{"hive-1.fast", "hive-1.slow", "hive-1"} {
			if _, ok := ev.find(registry.Joined, k); !ok {
				return fmt.Errorf("%s has not joined", k)
			}
		}
		return nil
	})
	wkv, hkv := kvs(t, url)
	// Stop all three without a goodbye on connections that stay open: only
	// the TTL can expire them.
	fast.Abandon()
	slow.Abandon()
	h.Abandon()
	lastF, lastS, lastH := getWorker(wkv, "hive-1.fast"), getWorker(wkv, "hive-1.slow"), getHive(hkv, "hive-1")
	type want struct {
		key  string
		last int64
		ttl  time.Duration
	}
	for _, w := range []want{{"hive-1.fast", lastF.ReceivedAtMs, 3 * time.Second},
		{"hive-1.slow", lastS.ReceivedAtMs, 6 * time.Second}, {"hive-1", lastH.ReceivedAtMs, 3 * time.Second}} {
		checkFor(t, w.ttl+10*time.Second, func() error {
			if _, ok := ev.find(registry.Expired, w.key); !ok {
				return fmt.Errorf("%s not expired yet", w.key)
			}
			return nil
		})
		exp, _ := ev.find(registry.Expired, w.key)
		lived := exp.At.Sub(time.UnixMilli(w.last))
		if lived < w.ttl-10*time.Millisecond {
			t.Errorf("%s expired %s after its last beat, before its TTL %s", w.key, lived, w.ttl)
		}
		t.Logf("%s: TTL %s, expired %s after its last beat", w.key, w.ttl, lived)
	}
}

// TestClusterAdvisories: in a 3-server cluster, a worker whose connection to
// one server closes is marked disconnected by a queen connected to another;
// a server shut down under its clients marks none of them: they reconnect
// elsewhere and beat at once.
func TestClusterAdvisories(t *testing.T) {
	servers := startCluster(t, 3)
	qc := queen.DefaultConfig()
	qc.Replicas = 3 // the buckets outlive the server shut down below
	_, ev := startQueenConfig(t, servers["n1"].ClientURL(), qc)
	closer, err := nats.Connect(servers["n2"].ClientURL(), nats.Name("w-closer"))
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, closer, "hive-1", "gone", time.Second)
	// A survivor connected to n3 first, able to fail over.
	survivor := conn(t, servers["n3"].ClientURL()+","+servers["n2"].ClientURL(), "w-survivor")
	startWorker(t, survivor, "hive-1", "survivor", time.Second)
	checkFor(t, 20*time.Second, func() error {
		for _, k := range []string{"hive-1.gone", "hive-1.survivor"} {
			if _, ok := ev.find(registry.Joined, k); !ok {
				return fmt.Errorf("%s has not joined", k)
			}
		}
		return nil
	})
	closer.Close()
	checkFor(t, 10*time.Second, func() error {
		if _, ok := ev.find(registry.Disconnected, "hive-1.gone"); !ok {
			return errors.New("the worker whose connection to n2 closed was not marked by the queen on n1")
		}
		return nil
	})
	wkv, _ := kvs(t, servers["n1"].ClientURL())
	servers["n3"].Shutdown()
	down := time.Now()
	// Over several beats after the shutdown, the survivor is never marked.
	seen := 0
	checkFor(t, 30*time.Second, func() error {
		if _, ok := ev.find(registry.Disconnected, "hive-1.survivor"); ok {
			return nil // checked below: it must have come back at once
		}
		if e := getWorker(wkv, "hive-1.survivor"); e != nil && e.ReceivedAtMs > down.UnixMilli() {
			seen++
		}
		if seen < 3 {
			return fmt.Errorf("%d reads of fresh survivor beats after the shutdown, want 3", seen)
		}
		return nil
	})
	if d, ok := ev.find(registry.Disconnected, "hive-1.survivor"); ok {
		r, ok := ev.find(registry.Reconnected, "hive-1.survivor")
		if !ok || r.At.Sub(d.At) > 2*time.Second {
			t.Fatalf("the survivor of a server shutdown stayed disconnected: %+v %+v", d, r)
		}
	}
	if n := ev.count(registry.Expired, "hive-1.survivor"); n != 0 {
		t.Fatalf("survivor expired %d times", n)
	}
}

// TestStalledWorker: a busy worker whose progress stands still for 3 of its
// intervals is stalled; when progress grows it recovers; an idle worker with
// frozen progress is not stalled.
func TestStalledWorker(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()
	_, ev := startQueen(t, url, 0)
	var (
		mu       sync.Mutex
		busy     = 0
		progress = uint64(100)
	)
	s := subjects.Default()
	pc := publisher.DefaultConfig(s.Worker("hive-1", "gpu0"), wire.SchemaWorker)
	pc.Interval = 500 * time.Millisecond
	p, err := publisher.New(conn(t, url, "gpu0"), pc, func() *wire.Worker {
		mu.Lock()
		defer mu.Unlock()
		n := progress
		w := &wire.Worker{HiveID: "hive-1", WorkerID: "gpu0", Status: wire.StatusReady, SlotsTotal: 4, SlotsBusy: busy,
			Progress: &n, Meta: wire.Meta{Health: wire.Healthy}}
		return w
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abandon)
	key := "hive-1.gpu0"
	checkFor(t, 10*time.Second, func() error {
		if _, ok := ev.find(registry.Joined, key); !ok {
			return errors.New("not joined")
		}
		return nil
	})
	// Idle for well over 3 intervals with frozen progress: not stalled.
	wkv, _ := kvs(t, url)
	first := getWorker(wkv, key).Seq
	checkFor(t, 10*time.Second, func() error {
		if e := getWorker(wkv, key); e == nil || e.Seq < first+5 {
			return fmt.Errorf("waiting for 5 idle beats: %+v", e)
		}
		return nil
	})
	if _, ok := ev.find(registry.Stalled, key); ok {
		t.Fatal("an idle worker was stalled")
	}
	mu.Lock()
	busy = 2
	mu.Unlock()
	p.Trigger()
	busyAt := time.Now()
	checkFor(t, 15*time.Second, func() error {
		if _, ok := ev.find(registry.Stalled, key); !ok {
			return fmt.Errorf("not stalled %s after going busy with frozen progress", time.Since(busyAt))
		}
		return nil
	})
	stalledAfter := time.Since(busyAt)
	if l, _, _ := workerLiveness(t, url, key); l != wire.LivenessStalled {
		t.Fatalf("entry liveness %s, want stalled", l)
	}
	mu.Lock()
	progress += 50
	mu.Unlock()
	p.Trigger()
	checkFor(t, 10*time.Second, func() error {
		if _, ok := ev.find(registry.Recovered, key); !ok {
			return errors.New("not recovered after progress grew")
		}
		return nil
	})
	t.Logf("busy with frozen progress → stalled after %s (3 × 500 ms); progress grew → recovered", stalledAfter)
}
