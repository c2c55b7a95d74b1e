package subscriber_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
)

func worker(hive, id string) []byte {
	w := wire.Worker{HiveID: hive, WorkerID: id, Status: wire.StatusReady, Meta: wire.Meta{Health: wire.Healthy}}
	w.Stamp("inst", 1, 1, 1000)
	b, _ := wire.Marshal(&w)
	return b
}

func hive(id string) []byte {
	h := wire.Hive{HiveID: id, Meta: wire.Meta{Health: wire.Healthy}, GPUs: []wire.GPU{}, Workers: []wire.HiveWorker{}}
	h.Stamp("inst", 1, 1, 1000)
	b, _ := wire.Marshal(&h)
	return b
}

func queen(id string) []byte {
	q := wire.Queen{QueenID: id, Meta: wire.Meta{Health: wire.Healthy}, State: wire.QueenOK}
	q.Stamp("inst", 1, 1, 1000)
	b, _ := wire.Marshal(&q)
	return b
}

func msg(subject, schema string, data []byte) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
	if schema != "" {
		m.Header.Set(wire.HeaderSchema, schema)
	}
	return m
}

func TestDecode(t *testing.T) {
	s := subjects.Default()
	noCT := msg("rbee.hb.worker.h1.w1", wire.SchemaWorker, worker("h1", "w1"))
	noCT.Header.Del(wire.HeaderContentType)
	tests := []struct {
		name string
		msg  *nats.Msg
		want subscriber.Reason // "" means accepted
	}{
		{"worker", msg("rbee.hb.worker.h1.w1", wire.SchemaWorker, worker("h1", "w1")), ""},
		{"hive", msg("rbee.hb.hive.h1", wire.SchemaHive, hive("h1")), ""},
		{"foreign subject", msg("other.hb.hive.h1", wire.SchemaHive, hive("h1")), subscriber.ReasonBadSubject},
		{"no content type", noCT, subscriber.ReasonBadHeaders},
		{"no schema header", msg("rbee.hb.worker.h1.w1", "", worker("h1", "w1")), subscriber.ReasonUnknownSchema},
		{"schema v2", msg("rbee.hb.worker.h1.w1", "worker/2", worker("h1", "w1")), subscriber.ReasonUnknownSchema},
		{"hive schema on worker subject", msg("rbee.hb.worker.h1.w1", wire.SchemaHive, worker("h1", "w1")), subscriber.ReasonUnknownSchema},
		{"garbage", msg("rbee.hb.worker.h1.w1", wire.SchemaWorker, []byte("\xc1garbage")), subscriber.ReasonUndecodable},
		{"oversize", msg("rbee.hb.worker.h1.w1", wire.SchemaWorker, make([]byte, wire.MaxPayload+1)), subscriber.ReasonOversize},
		{"spoofed worker", msg("rbee.hb.worker.h1.w1", wire.SchemaWorker, worker("h1", "w2")), subscriber.ReasonSpoofed},
		{"spoofed hive", msg("rbee.hb.worker.h1.w1", wire.SchemaWorker, worker("h2", "w1")), subscriber.ReasonSpoofed},
		{"spoofed hive beat", msg("rbee.hb.hive.h1", wire.SchemaHive, hive("h2")), subscriber.ReasonSpoofed},
		{"queen", msg("rbee.hb.queen.q1", wire.SchemaQueen, queen("q1")), ""},
		{"spoofed queen", msg("rbee.hb.queen.q1", wire.SchemaQueen, queen("q2")), subscriber.ReasonSpoofed},
		{"hive schema on queen subject", msg("rbee.hb.queen.q1", wire.SchemaHive, hive("q1")), subscriber.ReasonUnknownSchema},
		{"queen schema on hive subject", msg("rbee.hb.hive.q1", wire.SchemaQueen, queen("q1")), subscriber.ReasonUnknownSchema},
		{"queen beat on a hive subject", msg("rbee.hb.hive.q1", wire.SchemaHive, queen("q1")), subscriber.ReasonInvalid},
		{"invalid queen state", msg("rbee.hb.queen.q1", wire.SchemaQueen, func() []byte {
			q := wire.Queen{QueenID: "q1", Meta: wire.Meta{Health: wire.Healthy}, State: "fine"}
			q.Stamp("inst", 1, 1, 1000)
			b, _ := wire.Marshal(&q)
			return b
		}()), subscriber.ReasonInvalid},
		{"queen subject with a bad id", msg("rbee.hb.queen.q$1", wire.SchemaQueen, queen("q1")), subscriber.ReasonBadSubject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hb, err := subscriber.Decode(s, tt.msg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				set := 0
				for _, p := range []bool{hb.Worker != nil, hb.Hive != nil, hb.Queen != nil} {
					if p {
						set++
					}
				}
				if set != 1 {
					t.Fatalf("%d of Worker, Hive and Queen set, want exactly one", set)
				}
				if m := hb.Meta(); m.InstanceID != "inst" || m.Seq != 1 {
					t.Fatalf("Meta() = %+v", m)
				}
				return
			}
			var re *subscriber.RejectError
			if !errors.As(err, &re) || re.Reason != tt.want {
				t.Fatalf("err = %v, want reason %s", err, tt.want)
			}
			if hb != nil {
				t.Fatal("a rejected message returned a heartbeat")
			}
		})
	}
}

// TestWorkerEntry: a decoded worker beat becomes its registry entry without
// a copy; a beat not from Decode is copied; other kinds have none.
func TestWorkerEntry(t *testing.T) {
	s := subjects.Default()
	hb, err := subscriber.Decode(s, msg("rbee.hb.worker.h1.w1", wire.SchemaWorker, worker("h1", "w1")))
	if err != nil {
		t.Fatal(err)
	}
	rec := wire.Received{ReceivedAtMs: 1234, FirstSeenMs: 1000}
	e := hb.WorkerEntry(rec)
	if e == nil || &e.Worker != hb.Worker || e.Received != rec || e.WorkerID != "w1" {
		t.Fatalf("WorkerEntry = %+v, beat's Worker at %p", e, hb.Worker)
	}
	want, _ := wire.Marshal(&wire.WorkerEntry{Worker: *hb.Worker, Received: rec})
	if got, _ := wire.Marshal(e); string(got) != string(want) {
		t.Fatalf("entry encodes as %x, want %x", got, want)
	}
	lit := &subscriber.Heartbeat{Worker: hb.Worker}
	if c := lit.WorkerEntry(rec); c == nil || &c.Worker == hb.Worker || c.WorkerID != "w1" || c.Received != rec {
		t.Fatalf("a literal beat's WorkerEntry = %+v", c)
	}
	hv, err := subscriber.Decode(s, msg("rbee.hb.hive.h1", wire.SchemaHive, hive("h1")))
	if err != nil {
		t.Fatal(err)
	}
	if c := hv.WorkerEntry(rec); c != nil {
		t.Fatalf("a hive beat's WorkerEntry = %+v, want nil", c)
	}
}

func TestSubscribe(t *testing.T) {
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	beats := make(chan *subscriber.Heartbeat, 10)
	rejects := make(chan *subscriber.RejectError, 10)
	s := subjects.Default()
	_, err := subscriber.Subscribe(nc, s, s.All(), "", subscriber.Handler{
		Beat:   func(h *subscriber.Heartbeat) { beats <- h },
		Reject: func(r *subscriber.RejectError) { rejects <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	good := msg(s.Worker("h1", "w1"), wire.SchemaWorker, worker("h1", "w1"))
	good.Header.Set(wire.HeaderEvent, wire.EventGoodbye)
	for _, m := range []*nats.Msg{good, msg(s.Worker("h1", "w1"), wire.SchemaWorker, []byte("x"))} {
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	hb := testutil.Recv(t, beats, 5*time.Second, "beat")
	if hb.Worker.WorkerID != "w1" || !hb.Goodbye || hb.Addr.Kind != subjects.KindWorker {
		t.Fatalf("beat %+v", hb)
	}
	if r := testutil.Recv(t, rejects, 5*time.Second, "rejection"); r.Reason != subscriber.ReasonUndecodable {
		t.Fatalf("reject %+v", r)
	}
	if err := nc.PublishMsg(msg(s.Queen("q1"), wire.SchemaQueen, queen("q1"))); err != nil {
		t.Fatal(err)
	}
	if hb := testutil.Recv(t, beats, 5*time.Second, "queen beat"); hb.Queen == nil || hb.Queen.QueenID != "q1" || hb.Addr.Kind != subjects.KindQueen {
		t.Fatalf("queen beat %+v", hb)
	}
}

// TestSubscribeQueueGroup checks that two members of one queue group share
// the beats: every beat reaches exactly one of them.
func TestSubscribeQueueGroup(t *testing.T) {
	srv := testutil.Server(t)
	s := subjects.Default()
	var mu sync.Mutex
	got := map[uint64]int{}
	for range 2 {
		nc := testutil.Connect(t, srv.ClientURL())
		if _, err := subscriber.Subscribe(nc, s, s.All(), "queens", subscriber.Handler{Beat: func(h *subscriber.Heartbeat) {
			mu.Lock()
			got[h.Meta().Seq]++
			mu.Unlock()
		}}); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	pub := testutil.Connect(t, srv.ClientURL())
	const n = 50
	for i := range n {
		w := wire.Worker{HiveID: "h1", WorkerID: "w1", Status: wire.StatusReady, Meta: wire.Meta{Health: wire.Healthy}}
		w.Stamp("inst", uint64(i+1), 1, 1000)
		b, _ := wire.Marshal(&w)
		if err := pub.PublishMsg(msg(s.Worker("h1", "w1"), wire.SchemaWorker, b)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(got) != n {
			return fmt.Errorf("%d of %d beats delivered", len(got), n)
		}
		for seq, c := range got {
			if c != 1 {
				return fmt.Errorf("beat %d delivered %d times", seq, c)
			}
		}
		return nil
	})
}

func TestReasons(t *testing.T) {
	seen := map[subscriber.Reason]bool{}
	for _, r := range subscriber.Reasons {
		if seen[r] {
			t.Fatalf("reason %q listed twice", r)
		}
		seen[r] = true
	}
	for _, r := range []subscriber.Reason{subscriber.ReasonInterval, subscriber.ReasonReplay, subscriber.ReasonSpoofed, subscriber.ReasonConflict} {
		if !seen[r] {
			t.Errorf("Reasons lacks %q", r)
		}
	}
	if subscriber.ReasonInterval != "interval" {
		t.Errorf("ReasonInterval = %q", subscriber.ReasonInterval)
	}
}
