package wire

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/seeds from the sample payloads")

// TestSeedsUpToDate keeps the fuzz seeds in testdata/seeds equal to what the
// sample payloads encode to (go test ./wire -run Seeds -update-seeds rewrites them).
func TestSeedsUpToDate(t *testing.T) {
	w := sampleWorker()
	h := sampleHive()
	we := WorkerEntry{Worker: w, Received: Received{ReceivedAtMs: 1, FirstSeenMs: 1}}
	q, qe, ev := goldenQueen(), goldenQueenEntry(), goldenEvent()
	he := goldenHiveEntry()
	full := goldenWorkerEntry()
	seeds := map[string]any{"worker.msgpack": &w, "hive.msgpack": &h, "worker_entry.msgpack": &we,
		"queen.msgpack": &q, "queen_entry.msgpack": &qe, "event.msgpack": &ev, "hive_entry.msgpack": &he,
		"worker_entry_full.msgpack": &full,
		// nil for every kind of key, and ints where floats are documented
		"nils.msgpack": map[string]any{"v": 1, "instance_id": "i", "seq": 1, "interval_ms": 1000, "health": "healthy",
			"health_reason": nil, "hive_id": "h", "worker_id": "w", "queen_id": "q", "status": "ready", "state": "ok",
			"event": "joined", "kind": "worker", "model_id": nil, "slots_total": nil, "progress": nil, "engine_stale": nil,
			"cpu_percent": 12, "gpus": []any{map[string]any{"index": 0, "util_percent": 87, "power_w": nil, "xid": nil}},
			"workers": nil},
	}
	for name, v := range seeds {
		var b []byte
		var err error
		if m, ok := v.(map[string]any); ok {
			b = referenceMarshal(t, m)
		} else {
			b, err = Marshal(v)
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join("testdata", "seeds", name)
		if *updateSeeds {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, b) {
			t.Errorf("%s is stale: run go test ./wire -run Seeds -update-seeds", p)
		}
	}
}
