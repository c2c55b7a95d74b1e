package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// sink is one system under test fed by the load generator: it takes the beat
// of fleet worker i and reports how many beats it has fully handled.
type sink interface {
	// send hands the current payload of worker i to the system.
	send(i int) error
	// done returns the beats fully handled so far (accepted+rejected and
	// persisted, received, or acknowledged, depending on the system).
	done() uint64
	// drained reports whether nothing is in flight any more.
	drained() bool
}

// gen is the load generator: one goroutine publishing pre-encoded payloads
// from a fleet, patched to a fresh seq per round, with at most window beats
// handed over and not yet done.
type gen struct {
	f      *fleet
	s      sink
	window uint64
	cursor uint64 // beats sent so far over the sink's life; round = cursor / n
	// brokerPID is the broker's process when it runs in a child process, for
	// its CPU time; 0 when it runs in this one.
	brokerPID int
}

// trial is one timed run of the generator.
type trial struct {
	Beats   uint64        `json:"beats"`
	Elapsed time.Duration `json:"elapsed_ns"`
	Rate    float64       `json:"beats_per_s"`
	// ProcCPU is the whole process's CPU time.
	ProcCPU time.Duration `json:"process_cpu_ns"`
	// BrokerCPU is the broker's CPU time when it runs in a child process.
	BrokerCPU time.Duration `json:"broker_cpu_ns,omitempty"`
}

// run sends beats more beats and waits until all are done and drained, or
// limit passes. The clock runs from the first send to the last beat done.
func (g *gen) run(beats uint64, limit time.Duration) (trial, error) {
	pcpu0 := processCPU()
	var bcpu0 time.Duration
	if g.brokerPID != 0 {
		bcpu0 = pidCPU(g.brokerPID)
	}
	done0 := g.s.done()
	start := time.Now()
	deadline := start.Add(limit)
	sentAt := time.Now().UnixMilli()
	var sent, seen uint64
	n := uint64(g.f.n)
	for sent < beats {
		k := g.cursor
		i := int(k % n)
		if i == 0 {
			sentAt = time.Now().UnixMilli()
		}
		g.f.patch(i, k/n+1, sentAt)
		if err := g.s.send(i); err != nil {
			return trial{}, fmt.Errorf("send beat %d: %w", k, err)
		}
		g.cursor++
		sent++
		if sent-seen > g.window {
			for {
				seen = g.s.done() - done0
				if sent-seen <= g.window/2 {
					break
				}
				if time.Now().After(deadline) {
					return trial{}, fmt.Errorf("%d of %d beats done after %s", seen, sent, limit)
				}
				time.Sleep(200 * time.Microsecond)
			}
		}
	}
	for {
		seen = g.s.done() - done0
		if seen >= sent && g.s.drained() {
			break
		}
		if time.Now().After(deadline) {
			return trial{}, fmt.Errorf("%d of %d beats done after %s", seen, sent, limit)
		}
		time.Sleep(50 * time.Microsecond)
	}
	el := time.Since(start)
	t := trial{Beats: beats, Elapsed: el, Rate: float64(beats) / el.Seconds(), ProcCPU: processCPU() - pcpu0}
	if g.brokerPID != 0 {
		t.BrokerCPU = pidCPU(g.brokerPID) - bcpu0
	}
	return t, nil
}

// summary is the median and spread of several trials.
type summary struct {
	Trials []trial `json:"trials"`
	Median float64 `json:"median_beats_per_s"`
	Min    float64 `json:"min_beats_per_s"`
	Max    float64 `json:"max_beats_per_s"`
	// CPU seconds per 100k beats over all trials: the whole process (system
	// under test, load generator, and the broker unless it runs in a child
	// process), and the child broker if any.
	ProcCPUPer100k   float64  `json:"process_cpu_s_per_100k"`
	BrokerCPUPer100k float64  `json:"broker_cpu_s_per_100k,omitempty"`
	Notes            []string `json:"notes,omitempty"`
}

func summarise(ts []trial) summary {
	s := summary{Trials: ts}
	if len(ts) == 0 {
		return s
	}
	r := make([]float64, len(ts))
	var beats uint64
	var proc, brk time.Duration
	for i, t := range ts {
		r[i] = t.Rate
		beats += t.Beats
		proc, brk = proc+t.ProcCPU, brk+t.BrokerCPU
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(beats) * 1e5 }
	s.ProcCPUPer100k, s.BrokerCPUPer100k = per(proc), per(brk)
	sort.Float64s(r)
	s.Min, s.Max, s.Median = r[0], r[len(r)-1], r[len(r)/2]
	return s
}

// trials warms the sink with one beat per worker, then runs count timed trials.
func (g *gen) trials(count int, beats uint64, limit time.Duration) (summary, error) {
	if _, err := g.run(uint64(g.f.n), limit); err != nil {
		return summary{}, fmt.Errorf("warm-up: %w", err)
	}
	var ts []trial
	for range count {
		t, err := g.run(beats, limit)
		if err != nil {
			return summary{}, err
		}
		ts = append(ts, t)
	}
	return summarise(ts), nil
}

// coreSink is the limit of the bus: the generator's messages, headers
// included, received by a plain core-NATS subscriber that only counts them.
type coreSink struct {
	pub *nats.Conn
	msg nats.Msg
	f   *fleet
	got atomic.Uint64
	sub *nats.Subscription
}

func newCoreSink(pub, subConn *nats.Conn, f *fleet, subject string) (*coreSink, error) {
	c := &coreSink{pub: pub, f: f}
	var err error
	c.sub, err = subConn.Subscribe(subject, func(*nats.Msg) { c.got.Add(1) })
	if err != nil {
		return nil, err
	}
	if err := c.sub.SetPendingLimits(1<<20, 512<<20); err != nil {
		return nil, err
	}
	return c, subConn.Flush()
}

func (c *coreSink) send(i int) error {
	c.msg = nats.Msg{Subject: c.f.subjects[i], Data: c.f.mp[i], Header: c.f.header}
	return c.pub.PublishMsg(&c.msg)
}
func (c *coreSink) done() uint64  { return c.got.Load() }
func (c *coreSink) drained() bool { return true }

// kvPublisher publishes KV puts with acknowledgements, at most maxInFlight
// unacknowledged: with JetStream's PublishMsgAsync (std), or the lean way the
// queen's writer does it (a counter for the reply token on one wildcard
// subscription, a byte scan of the ack).
type kvPublisher struct {
	std    bool
	ttl    string // Nats-TTL of every publish (std only); empty: none
	js     jetstream.JetStream
	nc     *nats.Conn
	prefix string
	slots  chan struct{}
	next   atomic.Uint64
	acked  atomic.Uint64
	fails  atomic.Uint64
}

func newKVPublisher(nc *nats.Conn, std bool, maxInFlight int, ackTimeout time.Duration) (*kvPublisher, error) {
	p := &kvPublisher{std: std, nc: nc}
	if std {
		var err error
		p.js, err = jetstream.New(nc,
			jetstream.WithPublishAsyncMaxPending(maxInFlight),
			jetstream.WithPublishAsyncTimeout(ackTimeout),
			jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) { p.acked.Add(1) }),
			jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { p.fails.Add(1) }),
		)
		return p, err
	}
	p.prefix = nc.NewInbox() + "."
	p.slots = make(chan struct{}, maxInFlight)
	_, err := nc.Subscribe(p.prefix+"*", func(m *nats.Msg) {
		<-p.slots
		if bytes.Contains(m.Data, []byte(`"seq":`)) && !bytes.Contains(m.Data, []byte(`"error"`)) {
			p.acked.Add(1)
		} else {
			p.fails.Add(1)
		}
	})
	return p, err
}

func (p *kvPublisher) publish(subject string, data []byte) error {
	if p.std {
		m := &nats.Msg{Subject: subject, Data: data}
		if p.ttl != "" {
			m.Header = nats.Header{jetstream.MsgTTLHeader: {p.ttl}}
		}
		_, err := p.js.PublishMsgAsync(m)
		return err
	}
	p.slots <- struct{}{}
	return p.nc.PublishRequest(subject, p.prefix+strconv.FormatUint(p.next.Add(1), 10), data)
}

func (p *kvPublisher) done() uint64 { return p.acked.Load() + p.fails.Load() }

func (p *kvPublisher) drained() bool {
	if p.std {
		return p.js.PublishAsyncPending() == 0
	}
	return len(p.slots) == 0
}

// nullSink publishes the generator's messages where nobody listens, to
// measure what the generator itself costs.
type nullSink struct {
	core *coreSink
	n    uint64
}

func (s *nullSink) send(i int) error {
	s.core.msg = nats.Msg{Subject: "bench.null", Data: s.core.f.mp[i], Header: s.core.f.header}
	s.n++
	return s.core.pub.PublishMsg(&s.core.msg)
}
func (s *nullSink) done() uint64  { return s.n }
func (s *nullSink) drained() bool { return s.core.pub.Flush() == nil }

// storeSink is the limit of the store: the same payloads published straight
// into the worker bucket's stream ($KV.rbee_workers.<key>) with the queen's
// in-flight bound, nothing decoded.
type storeSink struct {
	f *fleet
	p *kvPublisher
}

func (s *storeSink) send(i int) error { return s.p.publish(s.f.kvSubj[i], s.f.mp[i]) }
func (s *storeSink) done() uint64     { return s.p.done() }
func (s *storeSink) drained() bool    { return s.p.drained() }

// relaySink is the queen's pipeline without the queen: a core subscriber that
// forwards each beat's bytes as a KV put, decoding nothing. It shows what the
// extra hop costs beside the store limit.
type relaySink struct {
	core *coreSink
	p    *kvPublisher
	sub  *nats.Subscription
}

func newRelaySink(pub, relayConn *nats.Conn, f *fleet, p *kvPublisher) (*relaySink, error) {
	r := &relaySink{core: &coreSink{pub: pub, f: f}, p: p}
	prefix := "rbee.hb.worker."
	var err error
	r.sub, err = relayConn.Subscribe(prefix+"*.*", func(m *nats.Msg) {
		key, ok := strings.CutPrefix(m.Subject, prefix)
		if !ok {
			return
		}
		if err := p.publish("$KV.rbee_workers."+key, m.Data); err != nil {
			p.fails.Add(1)
		}
	})
	if err != nil {
		return nil, err
	}
	if err := r.sub.SetPendingLimits(1<<20, 512<<20); err != nil {
		return nil, err
	}
	return r, relayConn.Flush()
}

func (r *relaySink) send(i int) error { return r.core.send(i) }
func (r *relaySink) done() uint64     { return r.p.done() }
func (r *relaySink) drained() bool    { return r.p.drained() }

// waitFor polls cond every 5 ms until it holds or limit passes.
func waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return errors.New("condition not met in " + limit.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}
