package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
	"github.com/vmihailenco/msgpack/v5"
)

// rawWorker returns a valid worker payload stamped with instance and seq, sent now.
func rawWorker(hiveID, workerID, instance string, seq uint64) *wire.Worker {
	w := &wire.Worker{
		Meta:   wire.Meta{Health: wire.Healthy},
		HiveID: hiveID, WorkerID: workerID, Status: wire.StatusReady,
		ModelID: "model-" + workerID, Device: "cuda:0", URL: "http://127.0.0.1:9000/" + workerID,
		Version: "test", SlotsTotal: 2,
	}
	w.Stamp(instance, seq, time.Now().UnixMilli(), 20_000) // TTL 60 s: nothing expires during a test
	// Each beat changes what a reader sees, so a lone queen writes every one
	// at once rather than as a lazy refresh (docs/wire.md, Per-entry TTL).
	waiting := int(seq % 1000)
	w.RequestsWaiting = &waiting
	return w
}

// rawHive returns a valid hive payload stamped with instance and seq, sent now.
func rawHive(hiveID, instance string, seq uint64) *wire.Hive {
	h := &wire.Hive{Meta: wire.Meta{Health: wire.Healthy}, HiveID: hiveID, Hostname: "host", Version: "test",
		RAMTotalBytes: 1 << 30, GPUs: []wire.GPU{}, Workers: []wire.HiveWorker{}}
	h.Stamp(instance, seq, time.Now().UnixMilli(), 20_000)
	return h
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withKey re-encodes v as a plain msgpack map with key set to val, to send
// values of the wrong type for a known key.
func withKey(t *testing.T, v any, key string, val any) []byte {
	t.Helper()
	var m map[string]any
	if err := msgpack.Unmarshal(mustMarshal(t, v), &m); err != nil {
		t.Fatal(err)
	}
	m[key] = val
	b, err := msgpack.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// beatMsg returns a message with the contract's headers for schema (none if
// schema is empty).
func beatMsg(subject, schema string, data []byte) *nats.Msg {
	msg := &nats.Msg{Subject: subject, Data: data}
	if schema != "" {
		msg.Header = nats.Header{wire.HeaderContentType: []string{wire.ContentTypeMsgpack}, wire.HeaderSchema: []string{schema}}
	}
	return msg
}

func publish(t *testing.T, nc *nats.Conn, msg *nats.Msg) {
	t.Helper()
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatalf("publish %s: %v", msg.Subject, err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// lastSeq returns the last stream sequence of a bucket: any write, delete or
// purge of any key moves it.
func lastSeq(t *testing.T, js jetstream.JetStream, bucket string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

func entryOf(t *testing.T, kv jetstream.KeyValue, key string) jetstream.KeyValueEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return e
}

// TestQueenRejectsBadInput sends malformed, hostile and stale beats over a
// real connection to a running queen: each is counted under its reason,
// changes nothing in either bucket, and the queen keeps accepting valid
// beats. Beats with a sender clock far off are accepted on the queen's clock.
func TestQueenRejectsBadInput(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()
	q, ev := startQueen(t, url, time.Minute) // nothing may expire during the test
	wkv, hkv := kvs(t, url)
	js, err := jetstream.New(testutil.Connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	nc := conn(t, url, "raw")

	const (
		hiveID = "hive-1"
		key    = "hive-1.w1"
		wsubj  = "rbee.hb.worker.hive-1.w1"
		hsubj  = "rbee.hb.hive.hive-1"
	)
	inst, seq := "inst-a", uint64(0)
	sent := map[uint64][]byte{} // payloads of instance inst-a by seq
	// sendValid sends the next valid beat of w1 and waits until it is the entry.
	sendValid := func(t *testing.T) {
		t.Helper()
		seq++
		b := mustMarshal(t, rawWorker(hiveID, "w1", inst, seq))
		if inst == "inst-a" {
			sent[seq] = b
		}
		publish(t, nc, beatMsg(wsubj, wire.SchemaWorker, b))
		want := seq
		testutil.Eventually(t, 5*time.Second, func() bool {
			e := getWorker(wkv, key)
			return e != nil && e.InstanceID == inst && e.Seq == want
		}, "beat %s seq %d stored", inst, want)
	}
	for range 3 {
		sendValid(t)
	}
	publish(t, nc, beatMsg(hsubj, wire.SchemaHive, mustMarshal(t, rawHive(hiveID, "hive-inst", 1))))
	testutil.Eventually(t, 5*time.Second, func() bool { return getHive(hkv, hiveID) != nil }, "hive entry stored")

	valid := func() *wire.Worker { return rawWorker(hiveID, "w1", inst, seq+1) }
	oversize := valid()
	oversize.ModelID = strings.Repeat("m", 512<<10)
	if max := nc.MaxPayload(); max < 600<<10 {
		t.Fatalf("server max_payload %d cannot carry the oversize case", max)
	}
	badWorker := func(f func(w *wire.Worker)) []byte { w := valid(); f(w); return mustMarshal(t, w) }
	positional, _ := msgpack.Marshal([]any{1, "inst-a", 9, hiveID, "w1"})
	long := strings.Repeat("x", 65)

	tests := []struct {
		name    string
		pre     func(t *testing.T) // valid beats sent before, which do change the registry
		msg     func() *nats.Msg
		reason  subscriber.Reason
		current func() // what the tracker's current beat becomes once pre has run
	}{
		{name: "garbage bytes", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, []byte("hello, I am not msgpack"))
		}, reason: subscriber.ReasonUndecodable},
		{name: "empty payload", msg: func() *nats.Msg { return beatMsg(wsubj, wire.SchemaWorker, nil) }, reason: subscriber.ReasonUndecodable},
		{name: "positional array", msg: func() *nats.Msg { return beatMsg(wsubj, wire.SchemaWorker, positional) }, reason: subscriber.ReasonUndecodable},
		{name: "truncated payload", msg: func() *nats.Msg {
			b := mustMarshal(t, valid())
			return beatMsg(wsubj, wire.SchemaWorker, b[:len(b)/2])
		}, reason: subscriber.ReasonUndecodable},
		{name: "trailing bytes", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, append(mustMarshal(t, valid()), 0xc0))
		}, reason: subscriber.ReasonUndecodable},
		{name: "hive gpus declaring 2^31 elements in 5 bytes", msg: func() *nats.Msg {
			b := append([]byte{0x81, 0xa4}, "gpus"...)
			return beatMsg(hsubj, wire.SchemaHive, append(b, 0xdd, 0x7f, 0xff, 0xff, 0x80))
		}, reason: subscriber.ReasonUndecodable},
		{name: "worker nested 10,000 arrays deep", msg: func() *nats.Msg {
			b := append([]byte{0x81, 0xa1, 'x'}, bytes.Repeat([]byte{0x91}, 10000)...)
			return beatMsg(wsubj, wire.SchemaWorker, append(b, 0xc0))
		}, reason: subscriber.ReasonUndecodable},
		{name: "oversize 512 KiB", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, mustMarshal(t, oversize))
		}, reason: subscriber.ReasonOversize},
		{name: "seq as string", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, withKey(t, valid(), "seq", "4"))
		}, reason: subscriber.ReasonBadType},
		{name: "hive_id as integer", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, withKey(t, valid(), "hive_id", 1))
		}, reason: subscriber.ReasonBadType},
		{name: "health as array", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, withKey(t, valid(), "health", []string{"healthy"}))
		}, reason: subscriber.ReasonBadType},
		{name: "slots_total as map", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, withKey(t, valid(), "slots_total", map[string]int{"n": 4}))
		}, reason: subscriber.ReasonBadType},
		{name: "no headers", msg: func() *nats.Msg {
			return beatMsg(wsubj, "", mustMarshal(t, valid()))
		}, reason: subscriber.ReasonBadHeaders},
		{name: "JSON content type", msg: func() *nats.Msg {
			m := beatMsg(wsubj, wire.SchemaWorker, mustMarshal(t, valid()))
			m.Header.Set(wire.HeaderContentType, "application/json")
			return m
		}, reason: subscriber.ReasonBadHeaders},
		{name: "schema header worker/2", msg: func() *nats.Msg {
			return beatMsg(wsubj, "worker/2", mustMarshal(t, valid()))
		}, reason: subscriber.ReasonUnknownSchema},
		{name: "no schema header", msg: func() *nats.Msg {
			m := beatMsg(wsubj, wire.SchemaWorker, mustMarshal(t, valid()))
			m.Header.Del(wire.HeaderSchema)
			return m
		}, reason: subscriber.ReasonUnknownSchema},
		{name: "hive schema on a worker subject", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaHive, mustMarshal(t, valid()))
		}, reason: subscriber.ReasonUnknownSchema},
		{name: "payload v 2", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, withKey(t, valid(), "v", 2))
		}, reason: subscriber.ReasonUnknownSchema},
		{name: "invalid worker_id in payload", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, badWorker(func(w *wire.Worker) { w.WorkerID = "w 1" }))
		}, reason: subscriber.ReasonInvalid},
		{name: "65-byte hive_id in payload", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, badWorker(func(w *wire.Worker) { w.HiveID = long }))
		}, reason: subscriber.ReasonInvalid},
		{name: "unknown status", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, badWorker(func(w *wire.Worker) { w.Status = "sleeping" }))
		}, reason: subscriber.ReasonInvalid},
		{name: "seq 0", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, badWorker(func(w *wire.Worker) { w.Seq = 0 }))
		}, reason: subscriber.ReasonInvalid},
		{name: "interval whose TTL passes the max TTL", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, badWorker(func(w *wire.Worker) { w.IntervalMs = 30 * 60 * 1000 }))
		}, reason: subscriber.ReasonInterval},
		{name: "subject with an invalid token", msg: func() *nats.Msg {
			return beatMsg("rbee.hb.worker.hive-1.w$1", wire.SchemaWorker, mustMarshal(t, valid()))
		}, reason: subscriber.ReasonBadSubject},
		{name: "subject without worker token", msg: func() *nats.Msg {
			return beatMsg("rbee.hb.worker.hive-1", wire.SchemaWorker, mustMarshal(t, valid()))
		}, reason: subscriber.ReasonBadSubject},
		{name: "subject with an extra token", msg: func() *nats.Msg {
			return beatMsg(wsubj+".x", wire.SchemaWorker, mustMarshal(t, valid()))
		}, reason: subscriber.ReasonBadSubject},
		{name: "65-byte id in subject", msg: func() *nats.Msg {
			return beatMsg("rbee.hb.worker.hive-1."+long, wire.SchemaWorker, mustMarshal(t, valid()))
		}, reason: subscriber.ReasonBadSubject},
		{name: "unknown kind in subject", msg: func() *nats.Msg {
			return beatMsg("rbee.hb.gpu.hive-1", wire.SchemaHive, mustMarshal(t, rawHive(hiveID, "hive-inst", 2)))
		}, reason: subscriber.ReasonBadSubject},
		{name: "payload names another worker", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, mustMarshal(t, rawWorker(hiveID, "w2", "inst-x", 1)))
		}, reason: subscriber.ReasonSpoofed},
		{name: "beat sent on another worker's subject", msg: func() *nats.Msg {
			return beatMsg("rbee.hb.worker.hive-1.w2", wire.SchemaWorker, mustMarshal(t, valid()))
		}, reason: subscriber.ReasonSpoofed},
		{name: "payload names another hive", msg: func() *nats.Msg {
			return beatMsg("rbee.hb.worker.hive-2.w1", wire.SchemaWorker, mustMarshal(t, valid()))
		}, reason: subscriber.ReasonSpoofed},
		{name: "hive beat for another hive", msg: func() *nats.Msg {
			return beatMsg(hsubj, wire.SchemaHive, mustMarshal(t, rawHive("hive-2", "hive-inst", 9)))
		}, reason: subscriber.ReasonSpoofed},
		{name: "replayed older beat", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, sent[seq-1])
		}, reason: subscriber.ReasonReplay},
		{name: "duplicate of the last beat", msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, sent[seq])
		}, reason: subscriber.ReasonReplay},
		{name: "reordered beat", pre: func(t *testing.T) {
			seq++ // seq+1 is held back and arrives after seq+2
			sent[seq] = mustMarshal(t, rawWorker(hiveID, "w1", inst, seq))
			sendValid(t)
		}, msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, sent[seq-1])
		}, reason: subscriber.ReasonReplay},
		{name: "old instance after a restart", pre: func(t *testing.T) {
			inst, seq = "inst-b", 0 // the worker restarted
			sendValid(t)
		}, msg: func() *nats.Msg {
			return beatMsg(wsubj, wire.SchemaWorker, mustMarshal(t, rawWorker(hiveID, "w1", "inst-a", 1000)))
		}, reason: subscriber.ReasonConflict}, // the ousted instance beating on while the new one holds the key
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.pre != nil {
				tt.pre(t)
			}
			before := q.Stats()
			wseq, hseq := lastSeq(t, js, "rbee_workers"), lastSeq(t, js, "rbee_hives")
			e0 := entryOf(t, wkv, key)
			msg := tt.msg()
			publish(t, nc, msg)
			testutil.Eventually(t, 5*time.Second, func() bool {
				return q.Stats().Rejected[tt.reason] > before.Rejected[tt.reason]
			}, "rejection counted as %s", tt.reason)
			after := q.Stats()
			for _, r := range subscriber.Reasons {
				want := before.Rejected[r]
				if r == tt.reason {
					want++
				}
				if after.Rejected[r] != want {
					t.Errorf("rejected[%s] = %d, want %d", r, after.Rejected[r], want)
				}
			}
			for k, n := range after.Accepted {
				if n != before.Accepted[k] {
					t.Errorf("accepted[%s] moved from %d to %d", k, before.Accepted[k], n)
				}
			}
			e1 := entryOf(t, wkv, key)
			if e1.Revision() != e0.Revision() || !bytes.Equal(e1.Value(), e0.Value()) {
				t.Errorf("%s changed: revision %d -> %d", key, e0.Revision(), e1.Revision())
			}
			if w, h := lastSeq(t, js, "rbee_workers"), lastSeq(t, js, "rbee_hives"); w != wseq || h != hseq {
				t.Errorf("buckets written: rbee_workers seq %d -> %d, rbee_hives seq %d -> %d", wseq, w, hseq, h)
			}
			t.Logf("%s (%d bytes) rejected as %s; %s revision %d, rbee_workers seq %d, rbee_hives seq %d unchanged",
				msg.Subject, len(msg.Data), tt.reason, key, e0.Revision(), wseq, hseq)
		})
	}

	// Ordering on one subscription means a write caused by any message above
	// would have landed before this valid beat: exactly one write follows.
	wseq := lastSeq(t, js, "rbee_workers")
	sendValid(t)
	if got := lastSeq(t, js, "rbee_workers"); got != wseq+1 {
		t.Fatalf("rbee_workers seq %d after one valid beat, want %d", got, wseq+1)
	}
	if keys(t, wkv)["hive-1.w2"] || keys(t, hkv)["hive-2"] || len(keys(t, wkv)) != 1 || len(keys(t, hkv)) != 1 {
		t.Fatalf("a rejected beat created a key: workers %v hives %v", keys(t, wkv), keys(t, hkv))
	}

	// A sender clock far off is informational: the beat is accepted, stamped
	// with the queen's clock, and the skew is recorded.
	for _, off := range []time.Duration{365 * 24 * time.Hour, -365 * 24 * time.Hour} {
		seq++
		w := rawWorker(hiveID, "w1", inst, seq)
		w.SentAtMs = time.Now().Add(off).UnixMilli()
		lo := time.Now().UnixMilli()
		publish(t, nc, beatMsg(wsubj, wire.SchemaWorker, mustMarshal(t, w)))
		want := seq
		testutil.Eventually(t, 5*time.Second, func() bool {
			e := getWorker(wkv, key)
			return e != nil && e.Seq == want
		}, "beat with sent_at_ms %s off accepted", off)
		hi := time.Now().UnixMilli()
		e := getWorker(wkv, key)
		if e.ReceivedAtMs < lo || e.ReceivedAtMs > hi {
			t.Fatalf("received_at_ms %d outside the queen's clock window [%d, %d]", e.ReceivedAtMs, lo, hi)
		}
		if e.SentAtMs != w.SentAtMs || e.SkewMs != e.ReceivedAtMs-e.SentAtMs {
			t.Fatalf("skew_ms %d, want received_at_ms %d - sent_at_ms %d", e.SkewMs, e.ReceivedAtMs, e.SentAtMs)
		}
		t.Logf("sent_at_ms %s off: accepted, received_at_ms on the queen's clock, skew_ms %d recorded", off, e.SkewMs)
	}

	// The queen still takes new senders.
	publish(t, nc, beatMsg("rbee.hb.worker.hive-1.w3", wire.SchemaWorker, mustMarshal(t, rawWorker(hiveID, "w3", "inst-c", 1))))
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, ok := ev.find(registry.Joined, "hive-1.w3")
		return ok
	}, "a new worker joins after the bad input")
	st := q.Stats()
	for _, r := range subscriber.Reasons {
		if st.Rejected[r] == 0 {
			t.Errorf("reason %s never exercised", r)
		}
	}
	t.Logf("queen stats after the run: accepted %v, rejected %v", st.Accepted, st.Rejected)
}

// TestQueenRestart stops the queen under running senders and starts a new
// one: the registry outlives the queen in KV, the new queen loads it without
// reporting live entries as joined, keeps their first-seen times, reports no
// live worker expired over a full TTL, and still reports the one that died
// while no queen was running.
func TestQueenRestart(t *testing.T) {
	const (
		interval = 250 * time.Millisecond
		ttl      = 2 * time.Second
	)
	srv := testutil.Server(t)
	url := srv.ClientURL()
	q1, ev1 := startQueen(t, url, ttl)
	wkv, hkv := kvs(t, url)

	hc := hive.DefaultConfig("hive-1")
	hc.Interval, hc.WorkerTTL, hc.Version = interval, ttl, "test"
	h, err := hive.New(conn(t, url, "hive"), hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
	nc := conn(t, url, "workers")
	live := []string{"hive-1.w1", "hive-1.w2", "hive-1.w3"}
	var workers []*worker.Worker
	for _, k := range live {
		workers = append(workers, startWorker(t, nc, "hive-1", strings.TrimPrefix(k, "hive-1."), interval))
	}
	doomed := startWorker(t, nc, "hive-1", "doomed", interval)
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, k := range append(live, "hive-1.doomed") {
			if _, ok := ev1.find(registry.Joined, k); !ok {
				return false
			}
		}
		_, ok := ev1.find(registry.Joined, "hive-1")
		return ok
	}, "every sender joined under the first queen")
	first := map[string]int64{}
	for _, k := range live {
		first[k] = getWorker(wkv, k).FirstSeenMs
	}

	doomed.Abandon() // dies while no queen is running
	q1.Stop(context.Background())
	down := time.Now()
	// Beats sent while no queen runs are lost; the entries must survive them.
	sent := workers[0].Stats().Sent
	testutil.Eventually(t, 5*time.Second, func() bool { return workers[0].Stats().Sent >= sent+2 }, "beats go unheard")
	for _, k := range live {
		if getWorker(wkv, k) == nil {
			t.Fatalf("%s lost when the queen stopped", k)
		}
	}
	if getHive(hkv, "hive-1") == nil {
		t.Fatal("hive entry lost when the queen stopped")
	}

	q2, ev2 := startQueen(t, url, ttl)
	gap := time.Since(down)
	if err := q2.Registry().WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	if nw, nh := q2.Registry().Sizes(); nw < len(live) || nh != 1 {
		t.Fatalf("new queen loaded %d workers and %d hives, want at least %d and 1", nw, nh, len(live))
	}
	// Wait for a full TTL of beats handled by the new queen.
	seqs := map[string]uint64{}
	for _, k := range live {
		seqs[k] = getWorker(wkv, k).Seq
	}
	need := uint64(ttl/interval) + 2
	testutil.Eventually(t, 4*ttl, func() bool {
		for _, k := range live {
			if e := getWorker(wkv, k); e == nil || e.Seq < seqs[k]+need {
				return false
			}
		}
		_, ok := ev2.find(registry.Expired, "hive-1.doomed")
		return ok
	}, "live workers beat %d times under the new queen and the dead one expires", need)

	for _, k := range append(live, "hive-1") {
		if n := ev2.count(registry.Joined, k); n != 0 {
			t.Errorf("new queen re-emitted joined for live %s (%d times)", k, n)
		}
		if n := ev2.count(registry.Expired, k) + ev1.count(registry.Expired, k); n != 0 {
			t.Errorf("live %s reported expired %d times", k, n)
		}
	}
	for _, k := range live {
		if e := getWorker(wkv, k); e == nil || e.FirstSeenMs != first[k] {
			t.Errorf("%s first_seen_ms changed across the restart: %d -> %+v", k, first[k], e)
		}
	}
	if r := q2.Stats().Rejected[subscriber.ReasonReplay]; r != 0 {
		t.Errorf("new queen rejected %d live beats as replays", r)
	}
	t.Logf("queen down %s; new queen loaded the registry (%d live workers, 1 hive), accepted %v beats over a full TTL (%s) with no joined and no expired for live entries, first_seen_ms kept; the worker that died meanwhile was reported expired",
		gap.Round(time.Millisecond), len(live), q2.Stats().Accepted, ttl)
}

// TestBrokerRestart stops the embedded broker (file storage) under a queen, a
// hive and workers and starts it again on the same port and store: every
// client reconnects by itself, beats resume, no live worker expires over the
// outage and the following TTL, and the queen's registry watcher still
// reports leaves and expiries afterwards.
func TestBrokerRestart(t *testing.T) {
	const (
		interval = 250 * time.Millisecond
		ttl      = 3 * time.Second
	)
	cfg := embedded.DefaultConfig(t.TempDir())
	cfg.Port = -1
	cfg.Logger = testutil.Logger(t)
	s1, err := embedded.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s1.Shutdown)
	cfg.Port = s1.NATS().Addr().(*net.TCPAddr).Port
	url := s1.ClientURL()

	q, ev := startQueen(t, url, ttl)
	hc := hive.DefaultConfig("hive-1")
	hc.Interval, hc.WorkerTTL, hc.Version = interval, ttl, "test"
	hconn := conn(t, url, "hive")
	h, err := hive.New(hconn, hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
	wconn := conn(t, url, "workers")
	w1 := startWorker(t, wconn, "hive-1", "w1", interval)
	w2 := startWorker(t, wconn, "hive-1", "w2", interval)
	w3 := startWorker(t, wconn, "hive-1", "w3", interval)
	live := []string{"hive-1.w1", "hive-1.w2", "hive-1.w3"}
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, k := range append(live, "hive-1") {
			if _, ok := ev.find(registry.Joined, k); !ok {
				return false
			}
		}
		return true
	}, "every sender joined")
	wkv, hkv := kvs(t, url)
	before := map[string]uint64{}
	for _, k := range live {
		before[k] = getWorker(wkv, k).Seq
	}
	hiveSeq := getHive(hkv, "hive-1").Seq
	accepted := q.Stats().Accepted["worker"]

	reg := q.Registry() // the queen's watcher must outlive the outage
	conns := map[string]*nats.Conn{"hive": hconn, "workers": wconn}
	s1.Shutdown()
	down := time.Now()
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, c := range conns {
			if c.Status() == nats.CONNECTED {
				return false
			}
		}
		return true
	}, "clients notice the outage")
	failed := map[*worker.Worker]uint64{}
	for _, w := range []*worker.Worker{w1, w2, w3} {
		failed[w] = w.Stats().Failed
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		for w, n := range failed {
			if w.Stats().Failed < n+2 {
				return false
			}
		}
		return true
	}, "every worker loses two beats to the outage")
	var s2 *embedded.Server
	testutil.Eventually(t, 10*time.Second, func() bool {
		s2, err = embedded.New(cfg)
		return err == nil
	}, "broker restarts on port %d: %v", cfg.Port, err)
	t.Cleanup(s2.Shutdown)
	outage := time.Since(down)
	if outage >= ttl {
		t.Fatalf("outage %s not shorter than the TTL %s: the test proves nothing", outage, ttl)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, c := range conns {
			if c.Status() != nats.CONNECTED {
				return false
			}
		}
		return true
	}, "clients reconnect by themselves")
	reconnected := time.Since(down)

	// Beats resume and run for longer than a TTL after the restart.
	need := uint64(ttl/interval) + 2
	testutil.Eventually(t, 4*ttl, func() bool {
		for _, k := range live {
			if e := getWorker(wkv, k); e == nil || e.Seq < before[k]+need {
				return false
			}
		}
		e := getHive(hkv, "hive-1")
		return e != nil && e.Seq > hiveSeq
	}, "beats resume for a full TTL after the restart")
	if q.Stats().Accepted["worker"] <= accepted {
		t.Fatal("queen accepted no worker beat after the restart")
	}
	for _, k := range append(live, "hive-1") {
		if n := ev.count(registry.Expired, k); n != 0 {
			t.Fatalf("live %s reported expired %d times across a %s outage", k, n, outage.Round(time.Millisecond))
		}
	}
	if nw, nh := reg.Sizes(); nw != len(live) || nh != 1 {
		t.Fatalf("queen's registry holds %d workers and %d hives, want %d and 1", nw, nh, len(live))
	}

	// The queen's watcher still reports changes: a leave and an expiry.
	stop := time.Now()
	if err := w1.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A leave shows within 0.5 s normally; 3 s is generous under load, and far
	// below the 10-20 s an unrecovered watch would take.
	testutil.Eventually(t, 3*time.Second, func() bool {
		_, ok := ev.find(registry.Left, "hive-1.w1")
		return ok
	}, "graceful stop after the restart observed as left")
	leftAfter := time.Since(stop)
	w2.Abandon()
	testutil.Eventually(t, ttl+5*time.Second, func() bool {
		_, ok := ev.find(registry.Expired, "hive-1.w2")
		return ok
	}, "crash after the restart observed as expired")
	if n := ev.count(registry.Expired, "hive-1.w3"); n != 0 {
		t.Fatalf("live w3 expired %d times", n)
	}
	t.Logf("broker down %s (TTL %s), all clients reconnected %s after the stop; %d+ beats per worker after the restart, no expiry; queen watcher saw a leave %s after the goodbye and an expiry after the restart",
		outage.Round(time.Millisecond), ttl, reconnected.Round(time.Millisecond), need, leftAfter.Round(time.Millisecond))
}

// flapper beats for one worker with the raw wire and nats packages until its
// context ends: every gap is interval ± jitter and every third beat is built
// but lost.
type flapper struct {
	nc       *nats.Conn
	hiveID   string
	workerID string
	interval time.Duration
	jitter   float64
	drop     int // beats with seq % 3 == drop are lost

	mu    sync.Mutex
	sends []time.Time // times of the beats that went out
	seq   uint64      // beat slots used, lost ones included
}

func (f *flapper) run(ctx context.Context) {
	inst := fmt.Sprintf("flap-%s-%d", f.workerID, time.Now().UnixNano())
	subject := "rbee.hb.worker." + f.hiveID + "." + f.workerID
	for {
		f.mu.Lock()
		f.seq++
		seq := f.seq
		f.mu.Unlock()
		if int(seq%3) != f.drop {
			w := rawWorker(f.hiveID, f.workerID, inst, seq)
			w.IntervalMs = f.interval.Milliseconds()
			data, _ := wire.Marshal(w)
			if f.nc.PublishMsg(beatMsg(subject, wire.SchemaWorker, data)) == nil {
				f.mu.Lock()
				f.sends = append(f.sends, time.Now())
				f.mu.Unlock()
			}
		}
		d := time.Duration(float64(f.interval) * (1 + f.jitter*(2*rand.Float64()-1)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// progress returns the beat slots used, the beats that went out, and the
// longest time between two beats that went out.
func (f *flapper) progress() (slots uint64, sent int, gap time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := 1; i < len(f.sends); i++ {
		gap = max(gap, f.sends[i].Sub(f.sends[i-1]))
	}
	return f.seq, len(f.sends), gap
}

// TestFlappingNoFalseExpiry runs senders at the edge of the contract: ±30 %
// jitter on every beat and, for the flapping workers, one beat in three lost.
// Two consecutive gaps then last at most 2 × 1.3 × interval, inside the TTL,
// so no entry may expire while its sender runs, over 100+ beat slots each.
func TestFlappingNoFalseExpiry(t *testing.T) {
	const (
		interval = 300 * time.Millisecond
		ttl      = time.Second // 2 × 1.3 × 300 ms = 780 ms < 1 s
		slots    = 105
	)
	srv := testutil.Server(t)
	url := srv.ClientURL()
	q, ev := startQueen(t, url, ttl)
	nc := conn(t, url, "flappers")

	// A real worker whose publisher uses ±30 % jitter, next to two raw
	// senders that also lose every third beat (at different phases).
	wc := startWorkerJitter(t, nc, "hive-1", "jitter", interval, 0.3)
	flappers := []*flapper{
		{nc: nc, hiveID: "hive-1", workerID: "flap-a", interval: interval, jitter: 0.3, drop: 0},
		{nc: nc, hiveID: "hive-1", workerID: "flap-b", interval: interval, jitter: 0.3, drop: 2},
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, f := range flappers {
		wg.Add(1)
		go func() { defer wg.Done(); f.run(ctx) }()
	}
	testutil.Eventually(t, 4*slots*interval, func() bool {
		for _, f := range flappers {
			if n, _, _ := f.progress(); n < slots {
				return false
			}
		}
		return wc.Stats().Sent >= slots
	}, "%d beat slots per sender", slots)

	// Every sender is still running: any expiry so far is false.
	for _, f := range flappers {
		key := "hive-1." + f.workerID
		n, sent, gap := f.progress()
		if _, ok := ev.find(registry.Joined, key); !ok {
			t.Errorf("%s never joined", key)
		}
		if x := ev.count(registry.Expired, key); x != 0 {
			if gap >= ttl {
				t.Fatalf("%s expired %d times, but the sender itself stalled %s (>= TTL %s): the machine was overloaded", key, x, gap, ttl)
			}
			t.Fatalf("%s falsely expired %d times: longest silence %s, TTL %s", key, x, gap, ttl)
		}
		t.Logf("%s: %d beat slots, %d sent (every third lost, ±30%% jitter), longest silence %s < TTL %s, no expiry",
			key, n, sent, gap.Round(time.Millisecond), ttl)
	}
	if x := ev.count(registry.Expired, "hive-1.jitter"); x != 0 {
		t.Fatalf("jittered worker expired %d times", x)
	}
	for r, n := range q.Stats().Rejected {
		if n != 0 {
			t.Fatalf("queen rejected %d beats as %s", n, r)
		}
	}
	t.Logf("hive-1.jitter: %d beats from the publisher with ±30%% jitter, no expiry; queen accepted %d worker beats, rejected none: %v",
		wc.Stats().Sent, q.Stats().Accepted["worker"], q.Stats().Rejected)
}

// startWorkerJitter is startWorker with a chosen jitter.
func startWorkerJitter(t *testing.T, nc *nats.Conn, hiveID, workerID string, interval time.Duration, jitter float64) *worker.Worker {
	t.Helper()
	c := worker.DefaultConfig(hiveID, workerID)
	c.Interval, c.Jitter = interval, jitter
	w, err := worker.New(nc, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	return w
}
