package queen

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

func TestAckError(t *testing.T) {
	tests := []struct {
		name string
		msg  *nats.Msg
		want error // nil, a sentinel, or errAny for any other error
	}{
		{"ack", &nats.Msg{Data: []byte(`{"stream":"KV_rbee_workers","seq":42}`)}, nil},
		{"ack with domain", &nats.Msg{Data: []byte(`{"stream":"KV_rbee_workers","domain":"hub","seq":7,"duplicate":true}`)}, nil},
		{"no responders", &nats.Msg{Header: nats.Header{"Status": {"503"}}}, errNoResponders},
		{"empty", &nats.Msg{}, errBadAck},
		{"stream error", &nats.Msg{Data: []byte(`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"KV_rbee_workers","seq":0}`)}, errAny},
		{"garbage", &nats.Msg{Data: []byte(`+OK`)}, errBadAck},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ackError(tt.msg)
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("ackError = %v, want nil", err)
			case tt.want == errAny && (err == nil || errors.Is(err, errBadAck) || errors.Is(err, errNoResponders)):
				t.Fatalf("ackError = %v, want the stream's error", err)
			case tt.want != nil && tt.want != errAny && !errors.Is(err, tt.want):
				t.Fatalf("ackError = %v, want %v", err, tt.want)
			}
		})
	}
}

var errAny = errors.New("any error")

// count returns the value of a counter.
func count(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// startTestQueen starts a queen with a short write deadline and one retry.
func startTestQueen(t *testing.T) (*Queen, *nats.Conn) {
	t.Helper()
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	cfg := DefaultConfig()
	cfg.WorkerTTL, cfg.HiveTTL = time.Minute, time.Minute
	cfg.RequestTimeout = 300 * time.Millisecond
	cfg.WriteRetries = 1
	cfg.Logger = testutil.Logger(t)
	q, err := New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Stop(context.Background()) })
	return q, testutil.Connect(t, srv.ClientURL())
}

func sendBeat(t *testing.T, nc *nats.Conn, seq uint64) {
	t.Helper()
	w := &wire.Worker{Meta: wire.Meta{Health: wire.Healthy}, HiveID: "h", WorkerID: "w", Status: wire.StatusReady, SlotsTotal: 1}
	w.Stamp("i", seq, time.Now().UnixMilli(), 1000)
	b, err := wire.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: subjects.Default().Worker("h", "w"), Data: b,
		Header: nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker}}}
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
}

func deleteWorkersStream(t *testing.T, nc *nats.Conn) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := js.DeleteKeyValue(ctx, subjects.Default().WorkersBucket()); err != nil {
		t.Fatal(err)
	}
}

func TestWriterAcknowledged(t *testing.T) {
	q, nc := startTestQueen(t)
	for seq := range uint64(50) {
		sendBeat(t, nc, seq+1)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		return q.Stats().Accepted[subjects.KindWorker] == 50 && q.Stats().InFlight == 0 && q.Stats().Workers == 1
	}, "50 beats written: %+v", q.Stats())
	if n := count(q.metrics.writeErrors); n != 0 {
		t.Fatalf("%v write errors", n)
	}
}

func TestWriterNoResponders(t *testing.T) {
	q, nc := startTestQueen(t)
	deleteWorkersStream(t, nc)
	sendBeat(t, nc, 1)
	// Each attempt is sent 1+noRespRetries times, noRespWait apart; two
	// attempts (WriteRetries 1), then the write is given up.
	testutil.Eventually(t, 10*time.Second, func() bool { return count(q.metrics.writesLost) == 1 },
		"write given up after no responders")
	if e, r := count(q.metrics.writeErrors), count(q.metrics.writeRetries); e != 2 || r != 1 {
		t.Fatalf("%v errors and %v retries, want 2 and 1", e, r)
	}
	if n := q.Stats().InFlight; n != 0 {
		t.Fatalf("%d writes still in flight", n)
	}
}

func TestWriterAckTimeout(t *testing.T) {
	q, nc := startTestQueen(t)
	deleteWorkersStream(t, nc)
	// Something takes the write and never answers.
	sub, err := nc.SubscribeSync("$KV.>")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sendBeat(t, nc, 1)
	testutil.Eventually(t, 10*time.Second, func() bool { return count(q.metrics.writesLost) == 1 },
		"write given up after two unanswered attempts")
	if el := time.Since(start); el < 2*q.cfg.RequestTimeout {
		t.Fatalf("given up after %s, before two deadlines of %s", el, q.cfg.RequestTimeout)
	}
	if n := q.Stats().InFlight; n != 0 {
		t.Fatalf("%d writes still in flight", n)
	}
}
