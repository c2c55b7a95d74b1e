package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/worker"
)

// TestStressPausedQueenPastItsTTL stops one of two queens for longer than
// its own entry's TTL (the default queen interval of 5 s: 15 s), on a broker
// with nats-server's default pings (every 2 minutes), which keeps handing the
// stopped queen its share all that while: the other queen sees the peer's
// entry expire, yet must go on taking that share from its reserve. Workers
// say goodbye after the entry expired, while the stopped queen still holds
// its share of their goodbyes. It asserts that no worker expires and that
// every goodbye arrives as a delete.
func TestStressPausedQueenPastItsTTL(t *testing.T) {
	bin := filepath.Join(rbeeBinary(t), "rbee")
	srv := defaultPingServer(t)
	args := append([]string{"queen", "--nats-url", srv.ClientURL(), "--http", "off", "--log-level", "warn"}, queenTTLArgs(t, bin, 3)...)
	out, cmd := startProcess(t, bin, args...)
	cutQueenPastItsTTL(t, srv, func() { signal(t, cmd, syscall.SIGSTOP) }, func() { signal(t, cmd, syscall.SIGCONT) }, out.String)
}

// TestStressPartitionedQueenPastItsTTL is TestStressPausedQueenPastItsTTL
// with the second queen running on and cut off from the broker instead:
// toxiproxy (as a Go library) between it and the broker holds everything in
// both directions, and then lets it through. That queen sees no stall of its
// own, so it decodes the beats it finds waiting and sends the writes it held:
// conditional, none may land over what the other queen wrote meanwhile.
func TestStressPartitionedQueenPastItsTTL(t *testing.T) {
	srv := defaultPingServer(t)
	p, purl := newProxy(t, srv.ClientURL())
	cfg := queen.DefaultConfig()
	cfg.Missed, cfg.QueenID = 3, "q-cut"
	startQueenConfig(t, purl, cfg)
	var restore func()
	cutQueenPastItsTTL(t, srv, func() { restore = blackhole(t, p) }, func() { restore() }, func() string { return "" })
}

// defaultPingServer is a broker that pings as nats-server does by default:
// a stopped or cut-off client keeps its subscriptions for minutes.
func defaultPingServer(t *testing.T) *embedded.Server {
	t.Helper()
	c := embedded.DefaultConfig(t.TempDir())
	c.Port = -1
	c.PingInterval = 2 * time.Minute
	srv, err := embedded.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

func signal(t *testing.T, cmd *exec.Cmd, s os.Signal) {
	t.Helper()
	if err := cmd.Process.Signal(s); err != nil {
		t.Fatal(err)
	}
}

// cutQueenPastItsTTL starts a queen on srv beside the one already there,
// then cuts the other one off (cut) for longer than its own entry's TTL (the
// default queen interval of 5 s: 15 s), with goodbyes after its entry
// expired, and resumes it. It asserts that no worker expires, that every
// goodbye arrives as a delete, and that no old beat is written after the
// resume.
func cutQueenPastItsTTL(t *testing.T, srv *embedded.Server, cut, resume func(), other func() string) {
	const (
		interval = time.Second
		ttl      = 3 * interval
		workers  = 30
		byes     = 6
	)
	q, _ := startQueen(t, srv.ClientURL(), ttl)
	testutil.Eventually(t, 30*time.Second, func() bool { return q.Registry() != nil && len(q.Registry().Queens()) == 2 },
		"the two queens see each other:\n%s", other())

	w := watchWorkers(t, srv.ClientURL())
	nc := conn(t, srv.ClientURL(), "workers")
	var ws []*worker.Worker
	for i := range workers {
		ws = append(ws, startWorker(t, nc, "gpu-node-1", fmt.Sprintf("w%d", i), interval))
	}
	testutil.Eventually(t, 20*time.Second, func() bool { p, _ := w.present(hiveKeys("gpu-node-1"), time.Time{}); return p == workers },
		"%d workers registered: %s", workers, w)
	window(2 * interval) // both queens take their share

	t0 := time.Now()
	cut()
	// The cut-off queen's entry expires in the other queen's registry.
	testutil.Eventually(t, 30*time.Second, func() bool { return len(q.Registry().Queens()) == 1 },
		"the cut-off queen's entry expired: %d queens in the registry", len(q.Registry().Queens()))
	window(ttl)
	for _, wk := range ws[:byes] {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := wk.Stop(ctx); err != nil {
			t.Errorf("goodbye: %v", err)
		}
		cancel()
	}
	window(3 * ttl)
	resumed := time.Now()
	resume()
	window(ttl + interval)
	if got := w.expiredSince(hiveKeys("gpu-node-1"), t0); len(got) > 0 {
		t.Errorf("%d of %d workers expired while one of two queens was cut off past its entry's TTL: %v\n%s\nother queen:\n%s",
			len(got), workers, got, w, other())
	}
	for i := range byes {
		if left, expired := w.left(fmt.Sprintf("gpu-node-1.w%d", i)); !left || expired {
			t.Errorf("w%d: left %v, expired %v: its goodbye must arrive as a delete\n%s", i, left, expired, w)
		}
	}
	var late []string
	for _, o := range w.ops(hiveKeys("gpu-node-1")) {
		if o.op == jetstream.KeyValuePut && o.at.After(resumed) && o.at.Sub(o.sentAt) > 2*interval {
			late = append(late, fmt.Sprintf("%s seq %d written %s after it was sent", o.key, o.seq, o.at.Sub(o.sentAt).Round(time.Millisecond)))
		}
	}
	if len(late) > 0 {
		t.Errorf("%d old beats written after the resume: %v\nother queen:\n%s", len(late), late, other())
	}
}
