package integration

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
)

// TestStressQueenKill9 kills an `rbee queen` child (and with it the embedded
// broker) with SIGKILL while it ingests 1000 load workers and 20 workers of an
// `rbee worker --simulate` child, and starts it again on the same data folder
// and port half an interval later. It asserts that no worker expires from the
// kill until a TTL after the restart, and that every worker is written again.
// The TTL is 6 beats: what this test checks is what the restarted queen
// writes, not how fast a child process and its broker's store recovery start
// on a busy test machine; with 3 beats that start alone once took the TTL. How
// a restart fares against a TTL of 3 beats is the chaos program's kill9 case
// (RELIABILITY.md), which reports its pass rate.
func TestStressQueenKill9(t *testing.T) {
	const (
		missed   = 6
		interval = time.Second
		ttl      = missed * interval
		healthy  = 20
		load     = 1000
	)
	bin := filepath.Join(rbeeBinary(t), "rbee")
	port := testutil.FreePorts(t, 1)[0]
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	args := append([]string{"queen", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", t.TempDir(), "--http", "off"},
		queenTTLArgs(t, bin, missed)...)
	qout, kill := startKillable(t, nil, bin, args...)
	wout := start(t, nil, bin, "worker", "--nats-url", url, "--hive-id", "healthy", "--worker-id", "w",
		"--simulate", fmt.Sprint(healthy), "--interval", interval.String())
	w := watchWorkers(t, url)
	testutil.Eventually(t, 60*time.Second, func() bool { p, _ := w.present(hiveKeys("healthy"), time.Time{}); return p == healthy },
		"%d workers registered: %s\nqueen:\n%s\nworkers:\n%s", healthy, w, qout, wout)
	startRawLoad(t, url, "load", load)
	testutil.Eventually(t, 30*time.Second, func() bool { p, _ := w.present(hiveKeys("load"), time.Time{}); return p == load },
		"%d load workers registered: %s", load, w)
	window(2 * interval) // mid-ingest

	t0 := time.Now()
	kill()
	window(interval / 2)
	restarted := time.Now()
	qout, _ = startKillable(t, nil, bin, args...)
	testutil.Eventually(t, 30*time.Second, func() bool {
		_, fh := w.present(hiveKeys("healthy"), restarted)
		_, fl := w.present(hiveKeys("load"), restarted)
		return fh == healthy && fl == load
	}, "every worker written again after the restart: %s\nqueen:\n%s", w, qout)
	window(ttl + interval)
	for _, hive := range []string{"healthy", "load"} {
		if got := w.expiredSince(hiveKeys(hive), t0); len(got) > 0 {
			t.Errorf("%d %s workers expired around the queen's kill -9 and restart: %v\n%s\nqueen:\n%s", len(got), hive, got[:min(10, len(got))], w, qout)
		}
	}
}
