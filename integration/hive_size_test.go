package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// TestHiveOf5000Workers: a hive whose view holds 5000 workers (simulated
// worker beats through a real server) keeps beating and stays alive in the
// registry: each beat carries the first 1024 workers by ID and says how many
// were left out, and the queen refuses none of them.
func TestHiveOf5000Workers(t *testing.T) {
	const (
		n        = 5000
		interval = 300 * time.Millisecond // the hive expires within a second if its beats are refused
	)
	srv := testutil.Server(t)
	url := srv.ClientURL()
	q, _ := startQueen(t, url, 3*interval)
	_, hkv := kvs(t, url)

	hc := hive.DefaultConfig("big")
	hc.Interval, hc.WorkerTTL = interval, time.Hour // every simulated worker stays in the view
	hc.Logger = testutil.Logger(t)
	h, err := hive.New(conn(t, url, "hive"), hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)

	nc := conn(t, url, "workers")
	for i := range n {
		w := rawWorker("big", fmt.Sprintf("w%04d", i), fmt.Sprintf("%032d", i), 1)
		data, err := wire.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		publish(t, nc, beatMsg("rbee.hb.worker.big."+w.WorkerID, wire.SchemaWorker, data))
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	var first uint64
	checkFor(t, 30*time.Second, func() error {
		e := getHive(hkv, "big")
		if e == nil {
			return fmt.Errorf("no hive entry (view %d workers)", len(h.Workers()))
		}
		if len(e.Workers) != wire.MaxHiveWorkers || e.WorkersOmitted != n-wire.MaxHiveWorkers {
			return fmt.Errorf("hive entry carries %d workers, %d omitted; want %d, %d (view %d)",
				len(e.Workers), e.WorkersOmitted, wire.MaxHiveWorkers, n-wire.MaxHiveWorkers, len(h.Workers()))
		}
		if e.Workers[0].WorkerID != "w0000" || e.Workers[len(e.Workers)-1].WorkerID != "w1023" {
			return fmt.Errorf("carries %s … %s, want the first by id w0000 … w1023", e.Workers[0].WorkerID, e.Workers[len(e.Workers)-1].WorkerID)
		}
		first = e.Seq
		return nil
	})
	// It stays alive beat after beat, each one accepted.
	checkFor(t, 30*time.Second, func() error {
		e := getHive(hkv, "big")
		if e == nil {
			return fmt.Errorf("hive entry gone after seq %d", first)
		}
		if e.Seq < first+5 || e.WorkersOmitted != n-wire.MaxHiveWorkers {
			return fmt.Errorf("hive entry seq %d (first full view at %d), %d omitted", e.Seq, first, e.WorkersOmitted)
		}
		return nil
	})
	for r, c := range q.Stats().Rejected {
		if c != 0 {
			t.Errorf("queen rejected %d beats as %s", c, r)
		}
	}
}
