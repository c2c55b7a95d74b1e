package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/subjects"
)

// ingestResult is the queen and its references at one fleet size.
type ingestResult struct {
	Workers      int     `json:"workers"`
	PayloadBytes float64 `json:"payload_bytes_msgpack"`
	JSONBytes    float64 `json:"payload_bytes_json"`
	Beats        uint64  `json:"beats_per_trial"`

	Queen      summary        `json:"queen"`
	Verify     verification   `json:"queen_verification"`
	Core       summary        `json:"core_nats"`
	Store      summary        `json:"store_kv_publish_async_with_ttl"`
	StoreNoTTL summary        `json:"store_kv_publish_async_without_ttl"`
	StoreWatch summary        `json:"store_kv_publish_async_with_ttl_and_watch"`
	StoreAsync summary        `json:"store_kv_publish_async_with_ttl_async_persist"`
	HTTP       summary        `json:"http_json"`
	Profile    *profileResult `json:"profile,omitempty"`

	RatioStore float64 `json:"queen_over_store"`
	RatioAsync float64 `json:"queen_over_store_async_persist"`
	RatioHTTP  float64 `json:"queen_over_http"`
	RatioCore  float64 `json:"queen_over_core"`
}

// measureIngest runs every system against a fleet of n workers, the queen
// first; with profile (the largest size) it profiles one more queen trial.
func measureIngest(o options, n int, profile bool) (ingestResult, error) {
	f, err := newFleet(n)
	if err != nil {
		return ingestResult{}, err
	}
	r := ingestResult{Workers: n, Beats: uint64(max(1, o.beats/n) * n)}
	r.PayloadBytes, r.JSONBytes = f.meanSize()
	run := func(name string, sum *summary, fn func(st *stack) (sink, error)) error {
		log.Printf("ingest %d workers: %s (load %s)", n, name, loadAvg())
		st, err := startStack(nil)
		if err != nil {
			return err
		}
		defer st.Stop()
		s, err := fn(st)
		if err != nil {
			return err
		}
		g := &gen{f: f, s: s, window: o.window}
		if *sum, err = trials(g.run, uint64(n), o.trials, r.Beats); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if ss, ok := s.(*storeSink); ok && ss.bad.Load() > 0 {
			return fmt.Errorf("%s: %d publishes failed", name, ss.bad.Load())
		}
		if st.q != nil {
			r.Verify = verify(st, f, g.cursor)
			if profile && o.cpuProfile != "" {
				log.Printf("ingest %d workers: queen under the CPU profiler", n)
				if r.Profile, err = profileTrial(o.cpuProfile, g, r.Beats); err != nil {
					return err
				}
			}
		}
		return st.errs.err()
	}
	const ttl = "90s" // what the queen writes for a 30 s beat: Missed × interval
	if err := errors.Join(
		run("queen", &r.Queen, func(st *stack) (sink, error) { return st.startQueen() }),
		run("core NATS", &r.Core, func(st *stack) (sink, error) { return newCoreSink(st) }),
		run("KV publishes with Nats-TTL", &r.Store, func(st *stack) (sink, error) { return newStoreSink(st, ttl, false, false) }),
		run("KV publishes without TTL", &r.StoreNoTTL, func(st *stack) (sink, error) { return newStoreSink(st, "", false, false) }),
		run("KV publishes with Nats-TTL, bucket watched", &r.StoreWatch, func(st *stack) (sink, error) { return newStoreSink(st, ttl, true, false) }),
		run("KV publishes with Nats-TTL, the queen's bucket", &r.StoreAsync, func(st *stack) (sink, error) { return newStoreSink(st, ttl, false, true) }),
	); err != nil {
		return r, err
	}
	log.Printf("ingest %d workers: HTTP/JSON (load %s)", n, loadAvg())
	if r.HTTP, err = ingestHTTP(o, f); err != nil {
		return r, fmt.Errorf("http: %w", err)
	}
	r.RatioStore, r.RatioHTTP, r.RatioCore = r.Queen.Median/r.Store.Median, r.Queen.Median/r.HTTP.Median, r.Queen.Median/r.Core.Median
	r.RatioAsync = r.Queen.Median / r.StoreAsync.Median
	return r, nil
}

// sink is one system under test fed by the load generator.
type sink interface {
	send(f *fleet, i int) error // hand worker i's current payload over
	done() uint64               // beats fully handled so far
	drained() bool              // nothing in flight any more
}

// gen is the load generator: one goroutine publishing the fleet's payloads,
// patched to a fresh seq per round, never more than window beats ahead of
// what the sink has handled.
type gen struct {
	f      *fleet
	s      sink
	window uint64
	cursor uint64 // beats sent over the sink's life; round = cursor / n
}

// trial is one timed run.
type trial struct {
	Beats   uint64        `json:"beats"`
	Elapsed time.Duration `json:"elapsed_ns"`
	Rate    float64       `json:"beats_per_s"`
	ProcCPU time.Duration `json:"process_cpu_ns"` // the whole process: system, broker, generator
	Load1   float64       `json:"load_average_1m_at_start"`
}

// run sends beats beats and waits until all are done and drained. The clock
// runs from the first send to the last beat done.
func (g *gen) run(beats uint64) (trial, error) {
	t := trial{Beats: beats, Load1: load1(), ProcCPU: processCPU()}
	done0, start := g.s.done(), time.Now()
	deadline := start.Add(2 * time.Minute)
	n, sentAt := uint64(g.f.n), start.UnixMilli()
	var sent, seen uint64
	wait := func(ok func() bool) error {
		for seen = g.s.done() - done0; !ok(); seen = g.s.done() - done0 {
			if time.Now().After(deadline) {
				return fmt.Errorf("%d of %d beats done after 2m", seen, sent)
			}
			// The queen's Stats reads every metric series: poll it sparingly,
			// or the generator takes CPU the system under test needs.
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	for sent < beats {
		i := int(g.cursor % n)
		if i == 0 {
			sentAt = time.Now().UnixMilli()
		}
		g.f.patch(i, g.cursor/n+1, sentAt)
		if err := g.s.send(g.f, i); err != nil {
			return t, fmt.Errorf("send beat %d: %w", g.cursor, err)
		}
		g.cursor++
		sent++
		if sent > seen+g.window { // seen may pass sent: the sink counts stray beats too
			if err := wait(func() bool { return sent <= seen+g.window/2 }); err != nil {
				return t, err
			}
		}
	}
	if err := wait(func() bool { return seen >= sent && g.s.drained() }); err != nil {
		return t, err
	}
	t.Elapsed = time.Since(start)
	t.Rate, t.ProcCPU = float64(beats)/t.Elapsed.Seconds(), processCPU()-t.ProcCPU
	return t, nil
}

// summary is the median and spread of several trials.
type summary struct {
	Trials []trial `json:"trials"`
	Median float64 `json:"median_beats_per_s"`
	Min    float64 `json:"min_beats_per_s"`
	Max    float64 `json:"max_beats_per_s"`
	// CPUPer100k is the process's CPU seconds per 100k beats over all trials.
	CPUPer100k float64 `json:"process_cpu_s_per_100k"`
}

// trials runs warm beats (one per worker), then count timed trials of beats.
func trials(run func(uint64) (trial, error), warm uint64, count int, beats uint64) (summary, error) {
	if _, err := run(warm); err != nil {
		return summary{}, fmt.Errorf("warm-up: %w", err)
	}
	s := summary{}
	var rates []float64
	var cpu time.Duration
	for range count {
		t, err := run(beats)
		if err != nil {
			return s, err
		}
		s.Trials, rates, cpu = append(s.Trials, t), append(rates, t.Rate), cpu+t.ProcCPU
	}
	slices.Sort(rates)
	s.Min, s.Max, s.Median = rates[0], rates[len(rates)-1], rates[len(rates)/2]
	s.CPUPer100k = cpu.Seconds() / float64(beats*uint64(count)) * 1e5
	return s, nil
}

// stack is an embedded broker in this process (as rbee queen runs it), a
// generator connection, and optionally a queen on its own connection.
type stack struct {
	dir  string
	srv  *embedded.Server
	gen  *nats.Conn
	qc   *nats.Conn
	q    *queen.Queen
	cfg  queen.Config
	stop context.CancelFunc
	errs asyncErrors
}

// startStack starts the broker and the generator's connection; edit may
// adjust the queen's configuration before startQueen.
func startStack(edit func(*queen.Config)) (*stack, error) {
	dir, err := os.MkdirTemp("", "rbee-bench-")
	if err != nil {
		return nil, err
	}
	st := &stack{dir: dir, cfg: queen.DefaultConfig()}
	if edit != nil {
		edit(&st.cfg)
	}
	c := embedded.DefaultConfig(dir)
	c.Port = -1
	if st.srv, err = embedded.New(c); err == nil {
		st.gen, err = st.connect("bench-loadgen")
	}
	if err != nil {
		st.Stop()
		return nil, err
	}
	return st, nil
}

// connect opens a connection like every rbee role does, counting its
// asynchronous errors (slow consumers).
func (st *stack) connect(name string) (*nats.Conn, error) {
	c := natsconn.DefaultConfig(st.srv.ClientURL(), name)
	c.OnAsyncError = st.errs.add
	return natsconn.Connect(c)
}

// startQueen starts the queen with a long-lived context and returns a sink
// that feeds it.
func (st *stack) startQueen() (sink, error) {
	var err error
	if st.qc, err = st.connect("rbee-queen"); err != nil {
		return nil, err
	}
	if st.q, err = queen.New(st.qc, st.cfg); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	st.stop = cancel
	if err := st.q.Start(ctx); err != nil {
		return nil, err
	}
	return &queenSink{pub: st.gen, q: st.q}, nil
}

// Stop stops the queen, the connections and the broker, and removes the store.
func (st *stack) Stop() {
	if st.q != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st.q.Stop(ctx)
		cancel()
		st.stop()
	}
	for _, nc := range []*nats.Conn{st.gen, st.qc} {
		if nc != nil {
			nc.Close()
		}
	}
	if st.srv != nil {
		st.srv.Shutdown()
	}
	_ = os.RemoveAll(st.dir)
}

// asyncErrors counts asynchronous connection errors.
type asyncErrors struct {
	n     atomic.Int64
	first atomic.Value
}

func (a *asyncErrors) add(err error) { a.first.CompareAndSwap(nil, err); a.n.Add(1) }
func (a *asyncErrors) err() error {
	if a.n.Load() == 0 {
		return nil
	}
	return fmt.Errorf("%d async connection errors, first: %w", a.n.Load(), a.first.Load().(error))
}

// coreSink is the bus limit: the generator's messages, headers included,
// received by a plain core-NATS subscriber that only counts them.
type coreSink struct {
	pub *nats.Conn
	got atomic.Uint64
}

func newCoreSink(st *stack) (*coreSink, error) {
	c := &coreSink{pub: st.gen}
	nc, err := st.connect("bench-core-sub")
	if err != nil {
		return nil, err
	}
	st.qc = nc
	sub, err := nc.Subscribe(subjects.Default().All(), func(*nats.Msg) { c.got.Add(1) })
	if err == nil {
		err = sub.SetPendingLimits(1<<20, 512<<20)
	}
	if err == nil {
		err = nc.Flush()
	}
	return c, err
}

func publish(nc *nats.Conn, f *fleet, i int) error {
	return nc.PublishMsg(&nats.Msg{Subject: f.subjects[i], Data: f.mp[i], Header: f.header})
}

func (c *coreSink) send(f *fleet, i int) error { return publish(c.pub, f, i) }
func (c *coreSink) done() uint64               { return c.got.Load() }
func (c *coreSink) drained() bool              { return true }

// storeSink is the store limit: the same payloads published straight into
// the worker bucket's stream ($KV.rbee_workers.<key>) with nats.go's
// PublishMsgAsync and the queen's in-flight bound, carrying the queen's
// Nats-TTL (ttl; empty: none), nothing decoded. With watch, an ordered
// WatchAll on its own connection receives every write, as the queen's
// registry mirror does: what the queen pays for seeing the bucket. With
// queens, the bucket is made as the queen makes it (queen.CreateBucket: async
// persist mode); else with nats.go's KV API, as at the bench's start.
type storeSink struct {
	js         jetstream.JetStream
	ttl        string
	acked, bad atomic.Uint64
	watch      bool
	watched    atomic.Uint64 // writes the watch delivered
}

func newStoreSink(st *stack, ttl string, watch, queens bool) (*storeSink, error) {
	s := &storeSink{ttl: ttl, watch: watch}
	var err error
	s.js, err = jetstream.New(st.gen,
		jetstream.WithPublishAsyncMaxPending(st.cfg.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(st.cfg.WriteTimeout),
		jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) { s.acked.Add(1) }),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { s.bad.Add(1) }))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := queen.BucketConfig(subjects.Default().WorkersBucket(), st.cfg.MaxTTL, 1)
	var kv jetstream.KeyValue
	if queens {
		kv, err = queen.CreateBucket(ctx, s.js, cfg) // async persist mode
	} else {
		kv, err = s.js.CreateOrUpdateKeyValue(ctx, cfg) // nats.go's KV API: the default mode
	}
	if err != nil || !watch {
		return s, err
	}
	if st.qc, err = st.connect("bench-watch"); err != nil { // closed with the stack
		return s, err
	}
	wjs, err := jetstream.New(st.qc)
	if err != nil {
		return s, err
	}
	wkv, err := wjs.KeyValue(ctx, kv.Bucket())
	if err != nil {
		return s, err
	}
	// The queen's registry watch: nats.go's KV WatchAll, from now on.
	kw, err := wkv.WatchAll(context.Background(), jetstream.UpdatesOnly())
	if err != nil {
		return s, err
	}
	go func() {
		for e := range kw.Updates() {
			if e != nil {
				s.watched.Add(1)
			}
		}
	}()
	return s, nil
}

func (s *storeSink) send(f *fleet, i int) error {
	m := &nats.Msg{Subject: f.kvSubj[i], Data: f.mp[i]}
	if s.ttl != "" {
		m.Header = nats.Header{jetstream.MsgTTLHeader: {s.ttl}}
	}
	_, err := s.js.PublishMsgAsync(m, jetstream.WithStallWait(10*time.Second)) // blocks at the in-flight bound
	return err
}

func (s *storeSink) done() uint64 { return s.acked.Load() + s.bad.Load() }

// drained: nothing in flight, and with a watch, every write seen by it.
func (s *storeSink) drained() bool {
	return s.js.PublishAsyncPending() == 0 && (!s.watch || s.watched.Load() >= s.acked.Load())
}

// queenSink feeds worker beats to the queen over core NATS. A beat is done
// once the queen counted it accepted or rejected; drained once no registry
// write waits or is in flight.
type queenSink struct {
	pub *nats.Conn
	q   *queen.Queen
}

func (s *queenSink) send(f *fleet, i int) error { return publish(s.pub, f, i) }
func (s *queenSink) done() uint64 {
	st := s.q.Stats()
	n := st.Accepted[subjects.KindWorker] + st.Superseded[subjects.KindWorker]
	for _, r := range st.Rejected {
		n += r
	}
	return n
}
func (s *queenSink) drained() bool { st := s.q.Stats(); return st.InFlight == 0 && st.Backlog == 0 }

// verification is the proof that the queen's trials lost nothing.
type verification struct {
	Sent, Accepted, Superseded, Rejected, Coalesced, Lost, Dropped uint64
	KVValues                                                       uint64
	MirrorAtLastSeq                                                int
	OK                                                             bool
	Problems                                                       []string `json:",omitempty"`
}

// verify checks that every beat sent was accepted (or superseded by a newer
// beat of its key before it was decoded), nothing was lost or
// dropped, and the bucket holds exactly one value per worker, each at the
// last round's seq in the queen's mirror (fed by a KV watch).
func verify(st *stack, f *fleet, sent uint64) verification {
	s := st.q.Stats()
	v := verification{Sent: sent, Accepted: s.Accepted[subjects.KindWorker], Superseded: s.Superseded[subjects.KindWorker],
		Coalesced: s.Coalesced, Lost: s.Lost, Dropped: s.Dropped}
	for _, r := range s.Rejected {
		v.Rejected += r
	}
	bad := func(format string, args ...any) { v.Problems = append(v.Problems, fmt.Sprintf(format, args...)) }
	if v.Accepted+v.Superseded != sent || v.Lost+v.Dropped != 0 {
		bad("sent %d, accepted %d, superseded %d, rejected %d, lost %d, dropped %d", sent, v.Accepted, v.Superseded, v.Rejected, v.Lost, v.Dropped)
	}
	want := seqOf(sent / uint64(f.n))
	deadline := time.Now().Add(time.Minute)
	for v.MirrorAtLastSeq < f.n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		v.MirrorAtLastSeq = 0
		for _, e := range st.q.Registry().Workers() {
			if e.Seq == want {
				v.MirrorAtLastSeq++
			}
		}
	}
	if v.MirrorAtLastSeq != f.n {
		bad("mirror: %d of %d entries at seq %d", v.MirrorAtLastSeq, f.n, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, err := jetstream.New(st.gen)
	var kv jetstream.KeyValue
	if err == nil {
		kv, err = js.KeyValue(ctx, subjects.Default().WorkersBucket())
	}
	var ks jetstream.KeyValueStatus
	if err == nil {
		ks, err = kv.Status(ctx)
	}
	if err != nil {
		bad("bucket: %v", err)
		return v
	}
	if v.KVValues = ks.Values(); v.KVValues != uint64(f.n) {
		bad("bucket holds %d values, want %d", v.KVValues, f.n)
	}
	if err := st.errs.err(); err != nil {
		bad("%v", err)
	}
	v.OK = len(v.Problems) == 0
	return v
}
