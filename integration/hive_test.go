package integration

import (
	"context"
	"os"
	"path/filepath"
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

// TestRbeeHiveMachineStats runs the `rbee hive` program on this machine and
// reads its registry entry: real CPU and RAM figures from gopsutil, the
// machine's hostname, and a GPU list that is empty where there is no NVML
// (or lists devices with UUIDs where there is), never absent.
func TestRbeeHiveMachineStats(t *testing.T) {
	bin := filepath.Join(rbeeBinary(t), "rbee")
	srv := testutil.Server(t)
	url := srv.ClientURL()
	startQueen(t, url, 10*time.Second)
	_, hkv := kvs(t, url)
	out := start(t, nil, bin, "hive", "--nats-url", url, "--hive-id", "this-machine", "--interval", "1s")

	var h *wire.HiveEntry
	testutil.Eventually(t, 15*time.Second, func() bool {
		e, err := hkv.Get(context.Background(), "this-machine")
		if err != nil {
			return false
		}
		h, err = wire.DecodeHiveEntry(e.Value())
		return err == nil && !h.StatsStale
	}, "no fresh hive entry from rbee hive:\n%s", out)

	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case h.Hostname != host:
		t.Fatalf("hostname %q, want %q", h.Hostname, host)
	case h.RAMTotalBytes == 0 || h.RAMUsedBytes == 0 || h.RAMUsedBytes > h.RAMTotalBytes:
		t.Fatalf("RAM used %d of %d bytes: not a real reading", h.RAMUsedBytes, h.RAMTotalBytes)
	case h.CPUPercent < 0 || h.CPUPercent > 100:
		t.Fatalf("cpu_percent %v out of 0-100", h.CPUPercent)
	case h.GPUs == nil:
		t.Fatal("gpus absent, want a list (empty without NVML)")
	}
	for _, g := range h.GPUs {
		if g.UUID == "" {
			t.Fatalf("gpu %d without a UUID: %+v", g.Index, g)
		}
	}
	t.Logf("rbee hive on this machine: cpu %.1f%%, RAM %d/%d bytes, %d GPUs, host temperature %v, stats age %d ms",
		h.CPUPercent, h.RAMUsedBytes, h.RAMTotalBytes, len(h.GPUs), h.HostTemperatureC, h.StatsAgeMs)
}
