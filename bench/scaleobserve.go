package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// kvOp is one stored message of a sampled key, as the bucket's stream
// holds it.
type kvOp struct {
	at     time.Time // the server's timestamp of the message
	op     byte      // 'P' a value, 'X' an expiry (purge marker), 'D' a goodbye (delete marker)
	sentAt int64     // the stored beat's sent_at_ms
	seq    uint64
	status wire.Status
}

// sampleWatch follows the sampled keys of the workers bucket through an
// ordered consumer filtered to their hives, the way an outside reader
// would, so that it costs the broker little whatever the fleet's size.
type sampleWatch struct {
	nc *nats.Conn
	cc jetstream.ConsumeContext

	mu    sync.Mutex
	ops   map[string][]kvOp
	bad   int // values that did not decode
	first error
}

// watchSamples starts following keys of the workers bucket from now on.
func watchSamples(url string, keys []string) (*sampleWatch, error) {
	nc, err := nats.Connect(url, nats.Name("bench-scale-observer"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	w := &sampleWatch{nc: nc, ops: map[string][]kvOp{}}
	s := subjects.Default()
	prefix := "$KV." + s.WorkersBucket() + "."
	var filter []string // one per hive: the broker matches each expiry against each
	for _, k := range keys {
		hive, _, _ := subjects.ParseWorkerKey(k)
		if f := prefix + hive + ".*"; !slices.Contains(filter, f) {
			filter = append(filter, f)
		}
	}
	js, err := jetstream.New(nc)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var c jetstream.Consumer
		c, err = js.OrderedConsumer(ctx, "KV_"+s.WorkersBucket(), jetstream.OrderedConsumerConfig{
			FilterSubjects: filter, DeliverPolicy: jetstream.DeliverNewPolicy})
		if err == nil {
			w.cc, err = c.Consume(func(m jetstream.Msg) { w.add(strings.TrimPrefix(m.Subject(), prefix), m) })
		}
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("watch the sampled keys: %w", err)
	}
	return w, nil
}

func (w *sampleWatch) add(key string, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		w.fail(err)
		return
	}
	o := kvOp{at: md.Timestamp, op: 'P'}
	h := m.Headers()
	switch {
	case h.Get("KV-Operation") == "DEL" || h.Get(jetstream.MarkerReasonHeader) == "Remove":
		o.op = 'D'
	case h.Get("KV-Operation") == "PURGE" || h.Get(jetstream.MarkerReasonHeader) != "":
		o.op = 'X'
	default:
		e, err := wire.DecodeWorkerEntry(m.Data())
		if err != nil {
			w.fail(err)
			return
		}
		o.sentAt, o.seq, o.status = e.SentAtMs, e.Seq, e.Status
	}
	w.mu.Lock()
	w.ops[key] = append(w.ops[key], o)
	w.mu.Unlock()
}

func (w *sampleWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bad++
	if w.first == nil {
		w.first = err
	}
}

// expired returns how many of keys have an expiry marker after from.
func (w *sampleWatch) expired(keys []string, from time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, k := range keys {
		if slices.ContainsFunc(w.ops[k], func(o kvOp) bool { return o.op == 'X' && !o.at.Before(from) }) {
			n++
		}
	}
	return n
}

// snapshot returns a copy of what was seen, by key.
func (w *sampleWatch) snapshot() (map[string][]kvOp, int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string][]kvOp, len(w.ops))
	for k, v := range w.ops {
		out[k] = slices.Clone(v)
	}
	return out, w.bad, w.first
}

func (w *sampleWatch) close() {
	w.cc.Stop()
	w.nc.Close()
}

// sampleFigures is what the sampled keys show over the measured window.
type sampleFigures struct {
	changeLag, refreshAge, lateness  []time.Duration
	changesSeen, viaLater, refreshes int
	falseExpiries, killedExpired     int
}

// readSamples judges what the watch saw. A change is a value whose status
// differs from the key's previous value; its lag runs from the sending of
// the beat that changed (the stored beat itself, or the one an interval
// before it when the change's own beat was never written) to the server's
// timestamp. Changes and refreshes count when their beat was sent within
// [from, to). An expiry of a killed key is late by its time minus (the last
// beat + ttl).
func readSamples(ops map[string][]kvOp, change []string, lastBeat map[string]time.Time, interval, ttl time.Duration, from, to time.Time) sampleFigures {
	var f sampleFigures
	in := func(ms int64) bool { t := time.UnixMilli(ms); return !t.Before(from) && t.Before(to) }
	for _, k := range change {
		var prev *kvOp
		for i := range ops[k] {
			o := &ops[k][i]
			if o.op != 'P' {
				f.falseExpiries += btoi(o.op == 'X')
				prev = nil
				continue
			}
			if prev == nil {
				prev = o
				continue
			}
			beat := int(o.seq - scaleSeqBase)
			switch {
			case o.status != prev.status:
				sent := o.sentAt
				if beat%2 == 1 {
					sent -= interval.Milliseconds()
				}
				if in(sent) {
					f.changesSeen++
					f.viaLater += btoi(beat%2 == 1)
					f.changeLag = append(f.changeLag, o.at.Sub(time.UnixMilli(sent)))
				}
			case in(o.sentAt):
				f.refreshes++
				f.refreshAge = append(f.refreshAge, o.at.Sub(time.UnixMilli(o.sentAt)))
			}
			prev = o
		}
	}
	for k, last := range lastBeat {
		i := slices.IndexFunc(ops[k], func(o kvOp) bool { return o.op == 'X' && o.at.After(last) })
		if i < 0 {
			continue
		}
		f.killedExpired++
		f.lateness = append(f.lateness, ops[k][i].at.Sub(last.Add(ttl)))
		f.falseExpiries += len(slices.DeleteFunc(slices.Clone(ops[k][:i]), func(o kvOp) bool { return o.op != 'X' }))
	}
	return f
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
