package events_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// historyQueen is a queen whose registry events go to the event stream, the
// way rbee queen wires them.
type historyQueen struct {
	q *queen.Queen
	p *events.Publisher
}

func (h *historyQueen) stop() {
	h.q.Stop(context.Background())
	h.p.Stop(context.Background())
}

func startHistoryQueen(t *testing.T, url, id string) *historyQueen {
	t.Helper()
	nc := testutil.Connect(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ensure(t, js, events.DefaultStreamConfig())
	p := startPublisher(t, js, id)
	qc := queen.DefaultConfig()
	qc.Logger, qc.OnEvent = testutil.Logger(t), p.OnEvent
	q, err := queen.New(nc, qc)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	h := &historyQueen{q, p}
	t.Cleanup(h.stop)
	return h
}

func beat(t *testing.T, url, hive, id string) *worker.Worker {
	t.Helper()
	c := worker.DefaultConfig(hive, id)
	c.Interval, c.ModelID = 100*time.Millisecond, "m"
	w, err := worker.New(testutil.Connect(t, url, nats.ReconnectBufSize(-1)), c)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	return w
}

// hasEvents returns nil once the history since since holds each of want
// ("<event> <key>"), in that order among its events.
func hasEvents(t *testing.T, js jetstream.JetStream, since time.Time, want ...string) error {
	got := keysOf(readAll(t, js, events.Query{Since: since}))
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	if i < len(want) {
		return fmt.Errorf("history %v lacks %v in order", got, want[i:])
	}
	return nil
}

// TestHistorySurvivesRestart records a worker joining and leaving, restarts
// the queen and the server on the same store, and replays both with --since.
func TestHistorySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	srv := testutil.ServerIn(t, dir)
	since := time.Now().Add(-time.Second)
	hq := startHistoryQueen(t, srv.ClientURL(), "queen-a")
	w := beat(t, srv.ClientURL(), "h1", "w1")
	js := jsOn(t, srv.ClientURL())
	waitFor(t, 10*time.Second, func() error { return hasEvents(t, js, since, "joined h1.w1") })
	if err := w.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error { return hasEvents(t, js, since, "joined h1.w1", "left h1.w1") })
	hq.stop()
	srv.Shutdown()

	srv = testutil.ServerIn(t, dir)
	startHistoryQueen(t, srv.ClientURL(), "queen-b")
	js = jsOn(t, srv.ClientURL())
	if err := hasEvents(t, js, since, "joined h1.w1", "left h1.w1"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	rs := readAll(t, js, events.Query{Since: since, HiveID: "h1"})
	for _, r := range rs {
		if r.Event.QueenID != "queen-a" || r.Event.WorkerID != "w1" || r.Event.V != wire.SchemaVersion {
			t.Fatalf("replayed %+v", r.Event)
		}
	}
	if rs := readAll(t, js, events.Query{Since: time.Now().Add(time.Minute)}); len(rs) != 0 {
		t.Fatalf("since the future: %v", keysOf(rs))
	}
}

// TestTwoQueensStoreEachEventOnce runs two queens on one server: both see
// every KV change and publish its event; the stream keeps one of each.
func TestTwoQueensStoreEachEventOnce(t *testing.T) {
	srv := testutil.Server(t)
	a := startHistoryQueen(t, srv.ClientURL(), "queen-a")
	b := startHistoryQueen(t, srv.ClientURL(), "queen-b")
	js := jsOn(t, srv.ClientURL())
	w1 := beat(t, srv.ClientURL(), "h1", "w1")
	beat(t, srv.ClientURL(), "h1", "w2")
	waitFor(t, 10*time.Second, func() error { return hasEvents(t, js, time.Time{}, "joined h1.w1") })
	if err := w1.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error { return hasEvents(t, js, time.Time{}, "joined h1.w1", "left h1.w1") })
	var handled uint64
	waitFor(t, 20*time.Second, func() error {
		sa, sb := a.p.Stats(), b.p.Stats()
		na, nb := sa.Published+sa.Duplicates, sb.Published+sb.Duplicates
		if na != nb || na < 3 {
			return fmt.Errorf("queen-a handled %+v, queen-b %+v", sa, sb)
		}
		handled = na
		return nil
	})
	rs := readAll(t, js, events.Query{})
	seen := map[string]string{}
	for _, r := range rs {
		id := fmt.Sprintf("%s/%d/%s", r.Event.Key, r.Event.Revision, r.Event.Event)
		if q, dup := seen[id]; dup {
			t.Fatalf("%s stored twice (by %s and %s): %v", id, q, r.Event.QueenID, keysOf(rs))
		}
		seen[id] = r.Event.QueenID
	}
	if uint64(len(rs)) != handled {
		t.Fatalf("stream holds %d events, each queen handled %d: %v", len(rs), handled, keysOf(rs))
	}
	sa, sb := a.p.Stats(), b.p.Stats()
	if sa.Duplicates+sb.Duplicates != handled {
		t.Fatalf("want %d duplicates in all: a %+v b %+v", handled, sa, sb)
	}
}
