package queen

import (
	"context"
	"errors"
	"fmt"
	"github.com/nats-io/nats.go"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// condBeat is the registry write of worker key "h.w"'s beat seq from
// instance inst, sent on connection conn, accepted now.
func condBeat(inst string, seq uint64, conn string) *op {
	now := time.Now().UnixMilli()
	return &op{kind: subjects.KindWorker, key: "h.w", instance: inst, seq: seq, conn: conn, acceptedMs: now,
		ttlMs: 30_000, intervalMs: 10_000, worker: &wire.WorkerEntry{
			Worker:   wire.Worker{HiveID: "h", WorkerID: "w", Status: wire.StatusReady, Meta: wire.Meta{InstanceID: inst, Seq: seq, Conn: conn, IntervalMs: 10_000, Health: wire.Healthy}},
			Received: wire.Received{ReceivedAtMs: now, FirstSeenMs: now}}}
}

func condBye(inst string, seq uint64) *op {
	o := condBeat(inst, seq, "")
	o.del, o.worker = true, nil
	return o
}

// storedAs describes the key's last message: "seq N" (with " disconnected"
// for a marked entry), "DEL", "PURGE" or "none", and its revision.
func storedAs(t *testing.T, q *Queen) (string, uint64) {
	t.Helper()
	raw, err := lastMsg(q.js, q.scheme.WorkersBucket(), "h.w")
	switch {
	case err != nil && isNotFound(err):
		return "none", 0
	case err != nil:
		t.Fatal(err)
	}
	if op := raw.Header.Get(kvOperation); op != "" {
		return op, raw.Sequence
	}
	e, err := wire.DecodeWorkerEntry(raw.Data)
	if err != nil {
		t.Fatal(err)
	}
	s := fmt.Sprintf("%s seq %d", e.InstanceID, e.Seq)
	if e.Liveness == wire.LivenessDisconnected {
		s += " disconnected"
	}
	return s, raw.Sequence
}

func isNotFound(err error) bool { return errors.Is(err, jetstream.ErrMsgNotFound) }

// written puts o on q's writer and waits until the writer is idle.
func written(t *testing.T, q *Queen, o *op) {
	t.Helper()
	q.w.put(o)
	settle(t, q)
}

func settle(t *testing.T, q *Queen) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if !q.w.wait(ctx) {
		t.Fatalf("writer not idle: %+v", q.w.stats())
	}
}

// TestConditionalWrites drives the writers of two and three queens sharing
// one bucket with the writes that raced each other before every write was
// conditional: an older beat after a newer one, a late copy after a
// goodbye, a retry of a write that did land, a disconnected mark after
// another queen wrote a newer beat. Each queen learns only from its own
// acknowledgements and (late) from its registry watch; every decision that
// matters comes from the server's refusal and a re-read.
func TestConditionalWrites(t *testing.T) {
	type queens struct{ a, b, c *Queen }
	scenarios := []struct {
		name string
		run  func(t *testing.T, q queens, want func(string))
	}{
		{"a late beat never over a newer one", func(t *testing.T, q queens, want func(string)) {
			written(t, q.a, condBeat("i1", 1, "s/1"))
			written(t, q.b, condBeat("i1", 3, "s/1"))
			want("i1 seq 3")
			written(t, q.a, condBeat("i1", 2, "s/1")) // a was behind
			want("i1 seq 3")
			if counterOf(q.a, "refused") == 0 {
				t.Error("the late beat was not counted as refused")
			}
		}},
		{"a retry of a write that landed is not written again", func(t *testing.T, q queens, want func(string)) {
			written(t, q.a, condBeat("i1", 1, "s/1"))
			written(t, q.b, condBeat("i1", 3, "s/1"))
			_, rev := storedAs(t, q.a)
			written(t, q.b, condBeat("i1", 3, "s/1")) // its ack was lost
			if _, again := storedAs(t, q.a); again != rev {
				t.Fatalf("the retry of a landed write was written again: revision %d, then %d", rev, again)
			}
			written(t, q.c, condBeat("i1", 4, "s/1"))
			written(t, q.a, condBeat("i1", 3, "s/1")) // a's retry of seq 3, after seq 4
			want("i1 seq 4")
		}},
		{"a mark applies only to the beat it was made for", func(t *testing.T, q queens, want func(string)) {
			written(t, q.b, condBeat("i1", 3, "s/1"))
			written(t, q.c, condBeat("i1", 4, "s/2"))
			// seq 3's connection closes after another queen wrote seq 4
			// from a new one: b's mark of seq 3 is refused.
			q.b.w.mark(subjects.KindWorker, "h.w", "s/1", nil, 0, time.Now().UnixMilli())
			settle(t, q.b)
			want("i1 seq 4")
			q.c.w.mark(subjects.KindWorker, "h.w", "s/2", nil, 0, time.Now().UnixMilli())
			settle(t, q.c)
			want("i1 seq 4 disconnected")
		}},
		{"a key that left never comes back from an older beat", func(t *testing.T, q queens, want func(string)) {
			written(t, q.a, condBeat("i1", 4, "s/2"))
			// The worker says goodbye through one queen; another queen's
			// late copy of an older beat (its reserve, a stopped queen) and
			// a replayed goodbye never bring it back.
			written(t, q.b, condBye("i1", 5))
			want("DEL")
			written(t, q.c, condBeat("i1", 4, "s/2"))
			want("DEL")
			written(t, q.a, condBeat("i1", 2, "s/1"))
			written(t, q.a, condBye("i1", 5))
			want("DEL")
			// A restart (a new instance) registers again, and the old
			// instance's late goodbye does not remove it.
			written(t, q.c, condBeat("i2", 1, "s/3"))
			want("i2 seq 1")
			written(t, q.a, condBye("i1", 5))
			want("i2 seq 1")
		}},
		{"a goodbye for a key with no entry deletes nothing", func(t *testing.T, q queens, want func(string)) {
			written(t, q.b, condBye("i0", 9))
			want("none")
		}},
	}
	for _, n := range []int{2, 3} {
		for _, sc := range scenarios {
			t.Run(fmt.Sprintf("%d queens/%s", n, sc.name), func(t *testing.T) {
				srv := testutil.Server(t)
				var qs []*Queen
				for i := range n {
					cfg := testConfig(t)
					cfg.QueenID = fmt.Sprintf("q%d", i)
					qs = append(qs, startTestQueen(t, srv.ClientURL(), cfg))
				}
				for _, q := range qs {
					waitEager(t, q) // other queens share the group: every beat is written
				}
				q := queens{qs[0], qs[1], qs[n-1]}
				sc.run(t, q, func(what string) {
					t.Helper()
					if got, _ := storedAs(t, q.a); got != what {
						t.Fatalf("stored %q, want %q", got, what)
					}
				})
				for _, q := range qs {
					if r := q.Stats().Lost; r != 0 {
						t.Errorf("queen %s lost %d writes", q.ID(), r)
					}
				}
			})
		}
	}
}

// waitEager waits until q has seen another queen in the registry and writes
// every beat at once.
func waitEager(t *testing.T, q *Queen) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		q.w.mu.Lock()
		eager := q.w.eager
		q.w.mu.Unlock()
		if eager {
			return
		}
		if time.Now().After(deadline) {
			live, _ := q.peers(time.Now())
			t.Fatalf("queen %s sees no other queen: %d peers", q.ID(), live)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counterOf returns q's count of failed writes with outcome.
func counterOf(q *Queen, outcome string) float64 {
	return value(q.metrics.writeOut.WithLabelValues(string(subjects.KindWorker), outcome))
}

// TestStopDrains: goodbyes delivered to the queen when Stop is called are
// handled (the keys left) or counted as dropped, never lost uncounted.
func TestStopDrains(t *testing.T) {
	const n = 1000
	srv := testutil.Server(t)
	cfg := testConfig(t)
	q, err := New(testutil.Connect(t, srv.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	nc := testutil.Connect(t, srv.ClientURL())
	send := func(i int, seq uint64, goodbye bool) {
		w := &wire.Worker{HiveID: "h", WorkerID: fmt.Sprintf("w%d", i), Status: wire.StatusReady, SlotsTotal: 1,
			Meta: wire.Meta{V: 1, InstanceID: fmt.Sprintf("inst%d", i), Seq: seq, IntervalMs: 1000, Health: wire.Healthy}}
		data, err := wire.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		msg := &nats.Msg{Subject: q.scheme.Worker("h", w.WorkerID), Data: data, Header: nats.Header{}}
		msg.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
		msg.Header.Set(wire.HeaderSchema, wire.SchemaWorker)
		if goodbye {
			msg.Header.Set(wire.HeaderEvent, wire.EventGoodbye)
		}
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		send(i, 1, false)
	}
	checkFor(t, 20*time.Second, func() error {
		if nw, _ := q.Registry().Sizes(); nw != n {
			return fmt.Errorf("%d of %d workers registered", nw, n)
		}
		return nil
	})
	for i := range n {
		send(i, 2, true)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	q.Stop(ctx)

	kv, err := q.js.KeyValue(t.Context(), q.scheme.WorkersBucket())
	if err != nil {
		t.Fatal(err)
	}
	present := 0
	for i := range n {
		if _, err := kv.Get(t.Context(), fmt.Sprintf("h.w%d", i)); err == nil {
			present++
		}
	}
	if dropped := int(q.Stats().Dropped); present != dropped {
		t.Fatalf("after Stop %d of %d workers are still present, and %d beats were counted as dropped", present, n, dropped)
	}
}

// TestMirrorSharesWrittenEntry: the registry mirror holds the entry this
// queen wrote, not a decoded copy of it, whether the watch delivers the
// write before or after the store's acknowledgement comes.
func TestMirrorSharesWrittenEntry(t *testing.T) {
	srv := testutil.Server(t)
	q := startTestQueen(t, srv.ClientURL(), testConfig(t))
	for seq := uint64(1); seq <= 5; seq++ {
		o := condBeat("i1", seq, "")
		o.worker.Status = []wire.Status{wire.StatusReady, wire.StatusBusy}[seq%2] // a change: written at once
		written(t, q, o)
		_, rev := storedAs(t, q)
		testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if _, r, ok := q.Registry().Worker("h.w"); !ok || r != rev {
				return fmt.Errorf("mirror at revision %d (present %v), want %d", r, ok, rev)
			}
			return nil
		})
		if e, _, _ := q.Registry().Worker("h.w"); e != o.worker {
			t.Fatalf("seq %d: the mirror holds a decoded copy (seq %d) of the entry this queen wrote", seq, e.Seq)
		}
	}
}
