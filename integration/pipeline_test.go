package integration

import (
	"context"
	"testing"
	"time"

	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
)

// TestPipeline runs queen, hive and workers at a 1 s interval against a 3 s
// TTL and checks the registry entries, expiry, departure and restart.
func TestPipeline(t *testing.T) {
	const (
		interval = time.Second
		ttl      = 3 * time.Second
	)
	srv := testutil.Server(t)
	url := srv.ClientURL()
	_, ev := startQueen(t, url, ttl)
	wkv, hkv := kvs(t, url)

	hc := hive.DefaultConfig("hive-1")
	hc.Interval, hc.WorkerTTL, hc.Version = interval, ttl, "test"
	h, err := hive.New(conn(t, url, "hive"), hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)

	nc := conn(t, url, "workers")
	crash := startWorker(t, nc, "hive-1", "crash", interval)
	leave := startWorker(t, nc, "hive-1", "leave", interval)
	again := startWorker(t, nc, "hive-1", "again", interval)
	for _, w := range []interface {
		SetStatus(wire.Status, wire.Health, string) error
	}{crash, leave, again} {
		if err := w.SetStatus(wire.StatusReady, wire.Healthy, ""); err != nil {
			t.Fatal(err)
		}
	}

	// Both buckets hold the right entries, every payload field round-tripped.
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, k := range []string{"hive-1.crash", "hive-1.leave", "hive-1.again"} {
			if e := getWorker(wkv, k); e == nil || e.Status != wire.StatusReady {
				return false
			}
		}
		return getHive(hkv, "hive-1") != nil
	}, "all entries ready")
	e := getWorker(wkv, "hive-1.crash")
	if e.HiveID != "hive-1" || e.WorkerID != "crash" || e.ModelID != "model-crash" || e.Device != "cuda:0" ||
		e.URL != "http://127.0.0.1:9000/crash" || e.Version != "test" || e.SlotsTotal != 4 || e.V != 1 ||
		e.InstanceID != crash.InstanceID() || e.Seq == 0 || e.IntervalMs != 1000 || e.Health != wire.Healthy {
		t.Fatalf("worker entry fields: %+v", e)
	}
	if e.ReceivedAtMs == 0 || e.FirstSeenMs == 0 || e.FirstSeenMs > e.ReceivedAtMs {
		t.Fatalf("queen fields: received %d first seen %d", e.ReceivedAtMs, e.FirstSeenMs)
	}
	he := getHive(hkv, "hive-1")
	if he.HiveID != "hive-1" || he.Version != "test" || he.Hostname == "" || he.GPUs == nil || he.IntervalMs != 1000 {
		t.Fatalf("hive entry fields: %+v", he)
	}
	for _, k := range []string{"hive-1.crash", "hive-1.leave", "hive-1.again"} {
		testutil.Eventually(t, 5*time.Second, func() bool { // the watch follows the store
			_, ok := ev.find(registry.Joined, k)
			return ok
		}, "joined event for %s", k)
	}

	// A crashed worker (no goodbye) is purged by its TTL; how late is a figure
	// for bench/, reported here, not asserted.
	crash.Abandon()
	lastBeat := time.Now()
	testutil.Eventually(t, ttl+3*time.Second, func() bool {
		_, ok := ev.find(registry.Expired, "hive-1.crash")
		return ok
	}, "crash expired")
	expired, _ := ev.find(registry.Expired, "hive-1.crash")
	t.Logf("crash expired, observed %s after its last beat (TTL %s)", time.Since(lastBeat), ttl)
	if expired.Worker == nil || expired.Worker.ModelID != "model-crash" {
		t.Fatalf("expired event lacks the last entry: %+v", expired)
	}
	if keys(t, wkv)["hive-1.crash"] {
		t.Fatal("expired key still in rbee_workers")
	}

	// A graceful stop deletes the key at once and is observed as left.
	stopAt := time.Now()
	if err := leave.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, ok := ev.find(registry.Left, "hive-1.leave")
		return ok
	}, "leave observed as left")
	t.Logf("left observed %s after the goodbye", time.Since(stopAt))
	if keys(t, wkv)["hive-1.leave"] {
		t.Fatal("departed key still in rbee_workers")
	}
	if _, ok := ev.find(registry.Expired, "hive-1.leave"); ok {
		t.Fatal("a graceful stop was reported as expired")
	}

	// A restarted worker (same IDs, new instance) is observed as restarted.
	again.Abandon()
	again2 := startWorker(t, nc, "hive-1", "again", interval)
	testutil.Eventually(t, 5*time.Second, func() bool {
		ev2, ok := ev.find(registry.Restarted, "hive-1.again")
		return ok && ev2.Worker.InstanceID == again2.InstanceID()
	}, "again observed as restarted")
	if n := ev.count(registry.Expired, "hive-1.again"); n != 0 {
		t.Fatalf("restarted worker also expired %d times", n)
	}

	// The hive's own view follows: the crashed and departed workers are gone.
	testutil.Eventually(t, 2*ttl, func() bool {
		he := getHive(hkv, "hive-1")
		return he != nil && len(he.Workers) == 1 && he.Workers[0].WorkerID == "again"
	}, "hive view lists only the live worker")
}
