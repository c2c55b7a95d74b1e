package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// queenStack is a broker, a queen on its own connection, and a load
// generator connection.
type queenStack struct {
	b     *broker
	gen   *nats.Conn
	qc    *nats.Conn
	q     *queen.Queen
	qerrs *asyncErrors
	gerrs *asyncErrors
}

// startQueenStack starts a broker storing under dir (in a child process if
// child) and a queen with worker TTL ttl. onEvent may be nil.
func startQueenStack(dir string, child bool, ttl time.Duration, onEvent func(registry.Event)) (*queenStack, error) {
	b, err := startBroker(dir, child)
	if err != nil {
		return nil, err
	}
	s := &queenStack{b: b, qerrs: &asyncErrors{}, gerrs: &asyncErrors{}}
	if s.qc, err = connect(b.URL, "rbee-queen", s.qerrs); err != nil {
		s.Stop()
		return nil, err
	}
	if s.gen, err = connect(b.URL, "bench-loadgen", s.gerrs); err != nil {
		s.Stop()
		return nil, err
	}
	cfg := queen.DefaultConfig()
	cfg.OnEvent = onEvent
	if s.q, err = queen.New(s.qc, cfg); err != nil {
		s.Stop()
		return nil, err
	}
	if err := s.q.Start(context.Background()); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Stop stops the queen, the connections and the broker.
func (s *queenStack) Stop() {
	if s.q != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.q.Stop(ctx)
		cancel()
	}
	for _, nc := range []*nats.Conn{s.gen, s.qc} {
		if nc != nil {
			nc.Close()
		}
	}
	s.b.Stop()
}

// queenSink feeds worker beats to the queen over core NATS. A beat is done
// once the queen counted it accepted or rejected; drained once no registry
// write is awaiting its acknowledgement.
type queenSink struct {
	core *coreSink
	q    *queen.Queen
}

func newQueenSink(s *queenStack, f *fleet) *queenSink {
	return &queenSink{core: &coreSink{pub: s.gen, f: f}, q: s.q}
}

func (s *queenSink) send(i int) error { return s.core.send(i) }
func (s *queenSink) done() uint64 {
	st := s.q.Stats()
	n := st.Accepted[subjects.KindWorker] + st.Accepted[subjects.KindHive]
	for _, r := range st.Rejected {
		n += r
	}
	return n
}
func (s *queenSink) drained() bool { return s.q.Stats().InFlight == 0 }

// verification is the proof that an ingest run lost nothing.
type verification struct {
	Sent             uint64   `json:"sent"`
	Accepted         uint64   `json:"accepted"`
	Rejected         uint64   `json:"rejected"`
	InFlight         int      `json:"in_flight_after"`
	WriteErrors      uint64   `json:"write_errors"`
	WriteRetries     uint64   `json:"write_retries"`
	WritesLost       uint64   `json:"writes_lost"`
	WritesSuperseded uint64   `json:"writes_superseded"`
	AsyncErrors      string   `json:"async_errors,omitempty"`
	KVValues         uint64   `json:"kv_values"`
	KVKeys           int      `json:"kv_distinct_keys"`
	WantKeys         int      `json:"want_keys"`
	WantSeq          uint64   `json:"want_last_seq"`
	MirrorAtLastSeq  int      `json:"mirror_entries_at_last_seq"`
	MirrorLag        string   `json:"mirror_catch_up"`
	SampledGets      int      `json:"sampled_gets"`
	SampledGetsOK    int      `json:"sampled_gets_at_last_seq"`
	OK               bool     `json:"ok"`
	Problems         []string `json:"problems,omitempty"`
}

// counters reads the queen's write counters through its Prometheus collector.
func counters(q *queen.Queen) (map[string]float64, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(q.Collector()); err != nil {
		return nil, err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				out[mf.GetName()] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[mf.GetName()] += m.GetGauge().GetValue()
			}
		}
	}
	return out, nil
}

// verify checks that every beat sent is accepted or rejected, nothing is in
// flight or lost, and KV holds exactly the fleet's keys at the last round's
// seq, both in the queen's mirror and read back directly.
func verify(s *queenStack, f *fleet, sent uint64) verification {
	v := verification{Sent: sent, WantKeys: f.n, WantSeq: seqOf(sent / uint64(f.n))}
	bad := func(format string, args ...any) { v.Problems = append(v.Problems, fmt.Sprintf(format, args...)) }
	st := s.q.Stats()
	v.Accepted = st.Accepted[subjects.KindWorker]
	for _, r := range st.Rejected {
		v.Rejected += r
	}
	v.InFlight = st.InFlight
	if v.Accepted+v.Rejected != sent {
		bad("sent %d, accepted %d + rejected %d", sent, v.Accepted, v.Rejected)
	}
	if v.InFlight != 0 {
		bad("%d writes in flight", v.InFlight)
	}
	c, err := counters(s.q)
	if err != nil {
		bad("metrics: %v", err)
	}
	v.WriteErrors = uint64(c["rbee_queen_kv_write_errors_total"])
	v.WriteRetries = uint64(c["rbee_queen_kv_write_retries_total"])
	v.WritesLost = uint64(c["rbee_queen_kv_writes_lost_total"])
	v.WritesSuperseded = uint64(c["rbee_queen_kv_writes_superseded_total"])
	if v.WritesLost != 0 {
		bad("%d writes lost", v.WritesLost)
	}
	for _, e := range []*asyncErrors{s.qerrs, s.gerrs} {
		if err := e.err(); err != nil {
			v.AsyncErrors = err.Error()
			bad("connection: %v", err)
		}
	}

	// The mirror is fed by a KV watch: once it shows the last seq for every
	// key, KV holds it too.
	start := time.Now()
	err = waitFor(context.Background(), 60*time.Second, func() bool {
		v.MirrorAtLastSeq = 0
		for _, e := range s.q.Registry().Workers() {
			if e.Seq == v.WantSeq {
				v.MirrorAtLastSeq++
			}
		}
		return v.MirrorAtLastSeq == f.n
	})
	v.MirrorLag = time.Since(start).Round(time.Millisecond).String()
	if err != nil {
		bad("mirror: %d of %d entries at seq %d", v.MirrorAtLastSeq, f.n, v.WantSeq)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js, err := jetstream.New(s.gen)
	if err != nil {
		bad("jetstream: %v", err)
		return v
	}
	kv, err := js.KeyValue(ctx, subjects.Default().WorkersBucket())
	if err != nil {
		bad("bucket: %v", err)
		return v
	}
	if ks, err := kv.Status(ctx); err == nil {
		v.KVValues = ks.Values()
	} else {
		bad("bucket status: %v", err)
	}
	if v.KVValues != uint64(f.n) {
		bad("bucket holds %d values, want %d", v.KVValues, f.n)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		bad("list keys: %v", err)
		return v
	}
	want := make(map[string]bool, f.n)
	for _, k := range f.keys {
		want[k] = true
	}
	seen := make(map[string]bool, f.n)
	for k := range lister.Keys() {
		if !want[k] {
			bad("unexpected key %q", k)
		}
		seen[k] = true
	}
	v.KVKeys = len(seen)
	if v.KVKeys != f.n {
		bad("%d distinct keys, want %d", v.KVKeys, f.n)
	}
	for range 200 {
		i := rand.IntN(f.n)
		v.SampledGets++
		e, err := kv.Get(ctx, f.keys[i])
		if err != nil {
			bad("get %s: %v", f.keys[i], err)
			continue
		}
		w, err := wire.DecodeWorkerEntry(e.Value())
		if err == nil && w.Seq == v.WantSeq && w.InstanceID == f.instance[i] && w.ReceivedAtMs > 0 {
			v.SampledGetsOK++
		}
	}
	if v.SampledGetsOK != v.SampledGets {
		bad("%d of %d sampled keys at the last seq", v.SampledGetsOK, v.SampledGets)
	}
	v.OK = len(v.Problems) == 0
	return v
}
