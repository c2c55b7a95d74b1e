package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/internal/testutil"
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
	const (
		interval = time.Second
		ttl      = 3 * interval
		workers  = 30
		byes     = 6
	)
	bin := filepath.Join(rbeeBinary(t), "rbee")
	c := embedded.DefaultConfig(t.TempDir())
	c.Port = -1
	c.PingInterval = 2 * time.Minute // nats-server's default: a frozen client stays for minutes
	srv, err := embedded.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	q, _ := startQueen(t, srv.ClientURL(), ttl)
	args := append([]string{"queen", "--nats-url", srv.ClientURL(), "--http", "off", "--log-level", "warn"}, queenTTLArgs(t, bin, 3)...)
	out, cmd := startProcess(t, bin, args...)
	testutil.Eventually(t, 30*time.Second, func() bool { return q.Registry() != nil && len(q.Registry().Queens()) == 2 },
		"the two queens see each other:\n%s", out)

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
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// The stopped queen's entry expires in the other queen's registry.
	testutil.Eventually(t, 30*time.Second, func() bool { return len(q.Registry().Queens()) == 1 },
		"the stopped queen's entry expired: %d queens in the registry", len(q.Registry().Queens()))
	window(ttl)
	for _, wk := range ws[:byes] {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := wk.Stop(ctx); err != nil {
			t.Errorf("goodbye: %v", err)
		}
		cancel()
	}
	window(3 * ttl)
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	window(ttl + interval)
	if got := w.expiredSince(hiveKeys("gpu-node-1"), t0); len(got) > 0 {
		t.Errorf("%d of %d workers expired while one of two queens was stopped past its entry's TTL: %v\n%s\nchild queen:\n%s",
			len(got), workers, got, w, out)
	}
	for i := range byes {
		if left, expired := w.left(fmt.Sprintf("gpu-node-1.w%d", i)); !left || expired {
			t.Errorf("w%d: left %v, expired %v: its goodbye must arrive as a delete\n%s", i, left, expired, w)
		}
	}
}
