package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/vmihailenco/msgpack/v5"
)

// queenStates records the state each queen states in its own beat
// (rbee.hb.queen.<queen_id>, schema queen/1), as any consumer sees it.
type queenStates struct {
	mu   sync.Mutex
	last map[string]queenState
}

type queenState struct {
	at            time.Time
	state, reason string
}

func watchQueenStates(t *testing.T, url string) *queenStates {
	t.Helper()
	qs := &queenStates{last: map[string]queenState{}}
	nc := testutil.Connect(t, url)
	if _, err := nc.Subscribe("rbee.hb.queen.>", func(m *nats.Msg) {
		var v map[string]any
		if msgpack.Unmarshal(m.Data, &v) != nil {
			return
		}
		id, _ := v["queen_id"].(string)
		st, _ := v["state"].(string)
		rs, _ := v["reason"].(string)
		qs.mu.Lock()
		qs.last[id] = queenState{at: time.Now(), state: st, reason: rs}
		qs.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return qs
}

// since reports whether some queen beat after t with a state satisfying ok.
func (qs *queenStates) since(t time.Time, ok func(string) bool) bool {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	for _, s := range qs.last {
		if s.at.After(t) && ok(s.state) {
			return true
		}
	}
	return false
}

func (qs *queenStates) String() string {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if len(qs.last) == 0 {
		return "no queen beat seen"
	}
	var out []string
	for id, s := range qs.last {
		out = append(out, fmt.Sprintf("%s: %s %q at %s", id, s.state, s.reason, s.at.Format("15:04:05.000")))
	}
	return strings.Join(out, "; ")
}

// TestStressStoreFull fills the broker's JetStream store (a 1 MiB limit and a
// filler stream that takes the rest) under a running queen, then deletes the
// filler. It asserts that the queen says so in its own beat (a state other
// than ok) while the store refuses writes, and that it recovers by itself
// once the space returns: its beat says ok again and every worker is written
// again, with no restart.
func TestStressStoreFull(t *testing.T) {
	const (
		interval = time.Second
		ttl      = 3 * interval
		workers  = 10
	)
	c := embedded.DefaultConfig(t.TempDir())
	c.Port, c.MaxStore = -1, 1<<20
	srv, err := embedded.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	startQueen(t, srv.ClientURL(), ttl)
	qs := watchQueenStates(t, srv.ClientURL())
	w := watchWorkers(t, srv.ClientURL())
	nc := conn(t, srv.ClientURL(), "workers")
	for i := range workers {
		startWorker(t, nc, "gpu-node-1", fmt.Sprintf("w%d", i), interval)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { n, _ := w.present(hiveKeys("gpu-node-1"), time.Time{}); return n == workers },
		"%d workers registered: %s", workers, w)

	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FILL", Subjects: []string{"fill.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 16<<10)
	full := false
	for range 1000 {
		if _, err := js.Publish(ctx, "fill.x", chunk); err != nil {
			t.Logf("store full: %v", err)
			full = true
			break
		}
	}
	if !full {
		t.Fatal("the filler never filled the store")
	}
	tFull := time.Now()
	testutil.Eventually(t, 15*time.Second, func() bool { return qs.since(tFull, func(s string) bool { return s != "" && s != "ok" }) },
		"the queen's beat says it is not ok while the store is full: %s", qs)

	if err := js.DeleteStream(ctx, "FILL"); err != nil {
		t.Fatal(err)
	}
	tFree := time.Now()
	testutil.Eventually(t, 30*time.Second, func() bool {
		_, fresh := w.present(hiveKeys("gpu-node-1"), tFree)
		return fresh == workers && qs.since(tFree.Add(interval), func(s string) bool { return s == "ok" })
	}, "the queen recovers once the space returns: %s; %s", qs, w)
}
