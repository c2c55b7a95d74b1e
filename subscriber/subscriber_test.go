package subscriber_test

import (
	"errors"
	"testing"

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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hb, err := subscriber.Decode(s, tt.msg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if (hb.Worker == nil) == (hb.Hive == nil) {
					t.Fatal("exactly one of Worker and Hive must be set")
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
	hb := <-beats
	if hb.Worker.WorkerID != "w1" || !hb.Goodbye || hb.Addr.Kind != subjects.KindWorker {
		t.Fatalf("beat %+v", hb)
	}
	if r := <-rejects; r.Reason != subscriber.ReasonUndecodable {
		t.Fatalf("reject %+v", r)
	}
}
