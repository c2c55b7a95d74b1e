package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// nodeLine is one line of the Node.js subscriber's output.
type nodeLine struct {
	Type    string         `json:"type"`
	Subject string         `json:"subject"`
	Schema  string         `json:"schema"`
	Event   *string        `json:"event"`
	Payload map[string]any `json:"payload"`
	Bucket  string         `json:"bucket"`
	Key     string         `json:"key"`
	Op      string         `json:"op"`
	State   string         `json:"state"`
	Value   map[string]any `json:"value"`
}

func parseNode(t *testing.T, l *lines) []nodeLine {
	t.Helper()
	var out []nodeLine
	for _, s := range l.snapshot() {
		var n nodeLine
		if err := json.Unmarshal([]byte(s), &n); err != nil {
			continue // stderr diagnostics share the stream
		}
		out = append(out, n)
	}
	return out
}

func findNode(ls []nodeLine, match func(nodeLine) bool) (nodeLine, bool) {
	for _, l := range ls {
		if match(l) {
			return l, true
		}
	}
	return nodeLine{}, false
}

// TestNodeSubscriber runs the Node.js example (official NATS JavaScript client
// and @msgpack/msgpack, written from docs/wire.md alone) against a running
// system and checks, from its output, that it decoded worker and hive beats
// and saw a purge on expiry and a delete on goodbye.
func TestNodeSubscriber(t *testing.T) {
	node := testutil.RequireTool(t, "node")
	dir, _ := filepath.Abs("../examples/node-subscriber")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@nats-io", "kv")); err != nil {
		if os.Getenv("RBEE_REQUIRE_TOOLS") != "" {
			t.Fatalf("node packages missing in %s: run ./scripts/test.sh", dir)
		}
		t.Skip("node packages not installed (./scripts/test.sh runs npm ci)")
	}
	srv := testutil.Server(t)
	url := srv.ClientURL()
	startQueen(t, url, 2*time.Second)

	sub := start(t, nil, node, filepath.Join(dir, "subscriber.mjs"), "--nats-url", url)
	testutil.Eventually(t, 20*time.Second, func() bool {
		_, ok := findNode(parseNode(t, sub), func(l nodeLine) bool { return l.Type == "ready" })
		return ok
	}, "node subscriber ready:\n%s", sub)

	mem, util := uint64(80<<30), 42.0
	hc := hive.DefaultConfig("gpu-node-1")
	hc.Interval, hc.WorkerTTL = 200*time.Millisecond, 2*time.Second
	hc.Stats = func(h *wire.Hive) {
		h.GPUs = []wire.GPU{{Index: 0, UUID: "GPU-aaaa", Name: "NVIDIA H100", VRAMTotalBytes: &mem, UtilPercent: &util}}
	}
	h, err := hive.New(conn(t, url, "hive"), hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
	nc := conn(t, url, "workers")
	crash := startWorker(t, nc, "gpu-node-1", "crash", 200*time.Millisecond)
	leave := startWorker(t, nc, "gpu-node-1", "leave", 200*time.Millisecond)
	_ = crash.SetStatus(wire.StatusBusy, wire.Healthy, "")

	testutil.Eventually(t, 10*time.Second, func() bool {
		ls := parseNode(t, sub)
		_, w := findNode(ls, func(l nodeLine) bool {
			return l.Type == "beat" && l.Schema == "worker/1" && l.Payload["worker_id"] == "crash" &&
				l.Payload["hive_id"] == "gpu-node-1" && l.Payload["status"] == "busy" && l.Payload["model_id"] == "model-crash"
		})
		_, h := findNode(ls, func(l nodeLine) bool {
			if l.Type != "beat" || l.Schema != "hive/1" || l.Payload["hive_id"] != "gpu-node-1" {
				return false
			}
			gpus, _ := l.Payload["gpus"].([]any)
			if len(gpus) != 1 {
				return false
			}
			g, _ := gpus[0].(map[string]any)
			return g["uuid"] == "GPU-aaaa" && g["name"] == "NVIDIA H100" && g["util_percent"] == 42.0
		})
		_, put := findNode(ls, func(l nodeLine) bool {
			return l.Type == "kv" && l.Bucket == "rbee_workers" && l.Key == "gpu-node-1.crash" && l.Op == "PUT" && l.Value["received_at_ms"] != nil
		})
		return w && h && put
	}, "worker beat, hive beat with its GPU list and a registry PUT decoded:\n%s", sub)
	t.Logf("node decoded worker and hive beats (IDs, status, GPU list) and registry values")

	crash.Abandon()
	if err := leave.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		ls := parseNode(t, sub)
		_, purge := findNode(ls, func(l nodeLine) bool {
			return l.Type == "kv" && l.Key == "gpu-node-1.crash" && l.Op == "PURGE" && l.State == "expired"
		})
		_, del := findNode(ls, func(l nodeLine) bool {
			return l.Type == "kv" && l.Key == "gpu-node-1.leave" && l.Op == "DEL" && l.State == "left"
		})
		_, bye := findNode(ls, func(l nodeLine) bool {
			return l.Type == "beat" && l.Payload["worker_id"] == "leave" && l.Event != nil && *l.Event == "goodbye"
		})
		return purge && del && bye
	}, "PURGE on expiry, DEL and goodbye beat on a graceful stop:\n%s", sub)
	for _, l := range parseNode(t, sub) {
		if l.Type == "error" {
			t.Fatalf("node subscriber reported an error: %+v", l)
		}
	}
	t.Logf("node saw PURGE (expired) for the killed worker and DEL (left) for the graceful one")
}
