package integration

import (
	"context"
	"testing"
	"time"

	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// TestHiveView checks the two-level chain: the hive subscribes to its own
// workers and its KV entry lists exactly them, with their states; a killed
// worker leaves the hive's view after its TTL, a graceful one at once.
func TestHiveView(t *testing.T) {
	const (
		interval = 500 * time.Millisecond
		ttl      = 1500 * time.Millisecond
	)
	srv := testutil.Server(t)
	url := srv.ClientURL()
	startQueen(t, url, 10*time.Second) // the registry outlives the hive's own TTL
	_, hkv := kvs(t, url)

	hc := hive.DefaultConfig("hive-a")
	hc.Interval, hc.WorkerTTL = interval, ttl
	h, err := hive.New(conn(t, url, "hive"), hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)

	nc := conn(t, url, "workers")
	w0 := startWorker(t, nc, "hive-a", "w0", interval)
	w1 := startWorker(t, nc, "hive-a", "w1", interval)
	w2 := startWorker(t, nc, "hive-a", "w2", interval)
	// A worker of another hive must not appear in this hive's view.
	startWorker(t, nc, "hive-b", "w9", interval)
	_ = w0.SetStatus(wire.StatusBusy, wire.Healthy, "")
	_ = w1.SetStatus(wire.StatusReady, wire.Degraded, "kv cache full")
	_ = w2.SetStatus(wire.StatusDraining, wire.Healthy, "")

	view := func() []wire.HiveWorker {
		if e := getHive(hkv, "hive-a"); e != nil {
			return e.Workers
		}
		return nil
	}
	want := map[string][2]string{"w0": {"busy", "healthy"}, "w1": {"ready", "degraded"}, "w2": {"draining", "healthy"}}
	matches := func(ws []wire.HiveWorker, want map[string][2]string) bool {
		if len(ws) != len(want) {
			return false
		}
		for _, w := range ws {
			st, ok := want[w.WorkerID]
			if !ok || string(w.Status) != st[0] || string(w.Health) != st[1] || w.ModelID != "model-"+w.WorkerID || w.LastSeenMs == 0 {
				return false
			}
		}
		return true
	}
	// Status changes are pushed at once by the workers and then by the hive,
	// so the entry is right within one interval.
	began := time.Now()
	testutil.Eventually(t, 5*time.Second, func() bool { return matches(view(), want) }, "hive view %+v", view())
	t.Logf("hive entry listed the three workers with their states %s after the status changes (interval %s)", time.Since(began).Round(time.Millisecond), interval)

	// A graceful stop leaves the view at once (well before the TTL).
	if err := w2.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	delete(want, "w2")
	testutil.Eventually(t, ttl, func() bool { return matches(view(), want) }, "graceful worker gone from the view: %+v", view())
	t.Logf("graceful worker left the hive's view after %s", time.Since(stopped).Round(time.Millisecond))

	// A killed worker stays until its TTL has passed, then goes.
	w1.Abandon()
	killed := time.Now()
	delete(want, "w1")
	testutil.Eventually(t, ttl+3*interval, func() bool { return matches(view(), want) }, "killed worker gone from the view: %+v", view())
	if gone := time.Since(killed); gone < ttl-interval {
		t.Fatalf("killed worker left the view after %s, before its TTL %s", gone, ttl)
	}
	t.Logf("killed worker left the hive's view %s after its last beat (TTL %s)", time.Since(killed).Round(time.Millisecond), ttl)
}
