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
	seeds := map[string]any{"worker.msgpack": &w, "hive.msgpack": &h, "worker_entry.msgpack": &we}
	for name, v := range seeds {
		b, err := Marshal(v)
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
