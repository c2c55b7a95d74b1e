package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

func statusWorker(hive, id, model string, st wire.Status, h wire.Health, l wire.Liveness) *wire.WorkerEntry {
	w := &wire.WorkerEntry{}
	w.HiveID, w.WorkerID, w.ModelID, w.Status, w.Health, w.Liveness = hive, id, model, st, h, l
	return w
}

// TestPrintStatusProblemsFirst: the models' summary comes first, models
// with no worker serving on top; hives and workers list problems first (not
// alive, unhealthy, degraded), then names in natural order.
func TestPrintStatusProblemsFirst(t *testing.T) {
	workers := []*wire.WorkerEntry{
		statusWorker("sim", "sim-1", "llama", wire.StatusReady, wire.Healthy, ""),
		statusWorker("sim", "sim-10", "llama", wire.StatusBusy, wire.Healthy, ""),
		statusWorker("sim", "sim-2", "llama", wire.StatusReady, wire.Healthy, ""),
		statusWorker("sim", "sim-7", "qwen", wire.StatusReady, wire.Unhealthy, ""),
		statusWorker("sim", "sim-30", "llama", wire.StatusBusy, wire.Healthy, wire.LivenessStalled),
	}
	ok := &wire.HiveEntry{}
	ok.HiveID, ok.Health = "node-2", wire.Healthy
	xid := 79
	sick := &wire.HiveEntry{}
	sick.HiveID, sick.Health = "node-10", wire.Degraded
	sick.GPUs = []wire.GPU{{Index: 0, Health: wire.Unhealthy, Xid: &xid, RecoveryAction: "node_reboot"}}
	gone := &wire.HiveEntry{}
	gone.HiveID, gone.Health, gone.Liveness = "node-11", wire.Healthy, wire.LivenessDisconnected
	var b bytes.Buffer
	printStatus(&b, workers, []*wire.HiveEntry{ok, sick, gone}, time.Now())
	out := b.String()
	order := func(section string, ids ...string) {
		t.Helper()
		i := strings.Index(out, section)
		if i < 0 {
			t.Fatalf("no %s section:\n%s", section, out)
		}
		at := i
		for _, id := range ids {
			j := strings.Index(out[at:], "\n"+id+" ")
			if j < 0 {
				t.Fatalf("%s: %s not after the previous row:\n%s", section, id, out)
			}
			at += j + 1
		}
	}
	order("MODELS (2)", "qwen", "llama")
	order("HIVES (3)", "node-11", "node-10", "node-2")
	order("WORKERS (5)", "sim-30", "sim-7", "sim-1", "sim-2", "sim-10")
	if !strings.Contains(out, "qwen   0      0     1        0") || !strings.Contains(out, "llama  2      1     1        0") {
		t.Errorf("models summary wrong:\n%s", out)
	}
}

// TestStatusNotAlive: --not-alive shows only workers that are not alive.
func TestStatusNotAlive(t *testing.T) {
	url, q := system(t, 5*time.Second)
	beatingWorker(t, url, "h1", "w1", 200*time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() bool { n, _ := q.Registry().Sizes(); return n == 1 }, "one worker")
	code, out, stderr := run(t, context.Background(), "", "status", "--nats-url", url, "--not-alive", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got struct {
		Workers []wire.WorkerEntry `json:"workers"`
		Models  []struct{ Model string }
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Workers) != 0 || len(got.Models) != 0 {
		t.Errorf("--not-alive with every worker alive: %s", out)
	}
	code, out, _ = run(t, context.Background(), "", "status", "--nats-url", url, "--json")
	if code != 0 || !strings.Contains(out, `"model": "m-w1"`) {
		t.Errorf("status --json lacks the models' summary: %s", out)
	}
}
