package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// keyState is what the observer saw of one registry key.
type keyState struct {
	op      jetstream.KeyValueOp // last operation
	lastPut time.Time            // when the last put was seen
	puts    int
	purges  int // expiries seen (a put followed by a purge marker)
	dels    int // departures seen (a put followed by a delete marker)
	// delsAfterExpiry: delete markers over a purge marker (a goodbye of a
	// sender whose entry had expired while it beat).
	delsAfterExpiry int
	maxGap          time.Duration
	// Decoded from the value, for the keys the observer decodes:
	instance   string
	seq        uint64
	receivedAt int64
	sentAt     int64
	conflict   bool
	liveness   string
}

// removal is one expiry or departure seen.
type removal struct {
	key   string
	at    time.Time
	purge bool
}

// observer watches the workers bucket and the queens' own beats through
// NATS, the way any consumer would. Methods may be called concurrently.
type observer struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	decode func(key string) bool // which keys' values are decoded

	mu       sync.Mutex
	keys     map[string]*keyState
	removals []removal
	lagAcc   []float64 // received_at_ms - sent_at_ms, ms (decoded keys)
	lagSeen  []float64 // seen by the observer - sent_at_ms, ms
	queens   map[string]queenBeat
	puts     uint64 // puts seen, all keys
	expiries uint64 // purges after a put seen, all keys

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// queenBeat is the part of a queen's own beat the program judges by.
type queenBeat struct {
	at     time.Time
	state  string
	reason string
}

func newObserver(url string, decode func(string) bool) (*observer, error) {
	nc, err := nats.Connect(url, nats.Name("chaos-observer"), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := &observer{nc: nc, js: js, decode: decode, keys: map[string]*keyState{}, queens: map[string]queenBeat{}, cancel: cancel}
	if _, err := nc.Subscribe("rbee.hb.queen.>", o.onQueen); err != nil {
		nc.Close()
		return nil, err
	}
	o.wg.Add(1)
	go o.run(ctx)
	return o, nil
}

func (o *observer) close() {
	o.cancel()
	o.wg.Wait()
	o.nc.Close()
}

// onQueen records a queen's own beat (schema queen/1), decoded loosely so
// that it works whatever other keys the payload carries.
func (o *observer) onQueen(m *nats.Msg) {
	var v map[string]any
	if err := msgpack.Unmarshal(m.Data, &v); err != nil {
		return
	}
	id, _ := v["queen_id"].(string)
	st, _ := v["state"].(string)
	rs, _ := v["reason"].(string)
	o.mu.Lock()
	o.queens[id] = queenBeat{at: time.Now(), state: st, reason: rs}
	o.mu.Unlock()
}

// countSubject counts the messages seen on subject (a core subscription).
func (o *observer) countSubject(subject string) (*atomic.Uint64, error) {
	n := new(atomic.Uint64)
	sub, err := o.nc.Subscribe(subject, func(*nats.Msg) { n.Add(1) })
	if err != nil {
		return nil, err
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	return n, o.nc.Flush()
}

// run keeps a watch on the workers bucket (registry.KVWatch, which resumes
// after a reconnect and re-lists the bucket), once the bucket exists.
func (o *observer) run(ctx context.Context) {
	defer o.wg.Done()
	for {
		kw, err := registry.WatchKV(ctx, o.js, "rbee_workers", registry.KVWatchConfig{OnChange: o.apply})
		if err == nil {
			<-ctx.Done()
			kw.Stop()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (o *observer) apply(e registry.Change) {
	now := time.Now()
	var dec *wire.WorkerEntry
	if e.Op == jetstream.KeyValuePut && o.decode != nil && o.decode(e.Key) {
		dec, _ = wire.DecodeWorkerEntry(e.Value)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.keys[e.Key]
	if s == nil {
		s = &keyState{}
		o.keys[e.Key] = s
	}
	switch e.Op {
	case jetstream.KeyValuePut:
		if !s.lastPut.IsZero() {
			s.maxGap = max(s.maxGap, now.Sub(s.lastPut))
		}
		s.lastPut = now
		s.puts++
		o.puts++
		if dec != nil {
			s.instance, s.seq = dec.InstanceID, dec.Seq
			s.receivedAt, s.sentAt = dec.ReceivedAtMs, dec.SentAtMs
			s.conflict = s.conflict || dec.Conflict
			s.liveness = string(dec.Liveness)
			o.lagAcc = append(o.lagAcc, float64(dec.ReceivedAtMs-dec.SentAtMs))
			o.lagSeen = append(o.lagSeen, float64(now.UnixMilli()-dec.SentAtMs))
		}
	case jetstream.KeyValuePurge, jetstream.KeyValueDelete:
		if s.op == jetstream.KeyValuePut {
			purge := e.Op == jetstream.KeyValuePurge
			if purge {
				s.purges++
				o.expiries++
			} else {
				s.dels++
			}
			o.removals = append(o.removals, removal{key: e.Key, at: now, purge: purge})
		} else if s.op == jetstream.KeyValuePurge && e.Op == jetstream.KeyValueDelete {
			s.delsAfterExpiry++
		}
	}
	s.op = e.Op
}

// counts returns the puts and expiries seen so far, over all keys.
func (o *observer) counts() (puts, expiries uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.puts, o.expiries
}

// snapshot returns a copy of the state of every key matching match.
func (o *observer) snapshot(match func(string) bool) map[string]keyState {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]keyState{}
	for k, s := range o.keys {
		if match(k) {
			out[k] = *s
		}
	}
	return out
}

// removalsBetween returns the removals of matching keys seen in [from, to).
func (o *observer) removalsBetween(match func(string) bool, from, to time.Time) []removal {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []removal
	for _, r := range o.removals {
		if match(r.key) && !r.at.Before(from) && r.at.Before(to) {
			out = append(out, r)
		}
	}
	return out
}

// resetLag forgets the lag samples so far.
func (o *observer) resetLag() {
	o.mu.Lock()
	o.lagAcc, o.lagSeen = nil, nil
	o.mu.Unlock()
}

// lag returns the accept-lag and seen-lag distributions since resetLag.
func (o *observer) lag() (acc, seen dist) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return newDist(o.lagAcc), newDist(o.lagSeen)
}

// queen returns the last beat of any queen whose state is not ok, else of any queen.
func (o *observer) queenStates() map[string]queenBeat {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]queenBeat{}
	for k, v := range o.queens {
		out[k] = v
	}
	return out
}

// livePresent returns how many of the keys matching match are present
// (last operation a put), and how many of them were put after since.
func (o *observer) livePresent(match func(string) bool, since time.Time) (present, fresh int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, s := range o.keys {
		if match(k) && s.op == jetstream.KeyValuePut {
			present++
			if s.lastPut.After(since) {
				fresh++
			}
		}
	}
	return present, fresh
}

// resetGaps forgets the per-key gaps so far, keeping the last put times.
func (o *observer) resetGaps() {
	o.mu.Lock()
	for _, s := range o.keys {
		s.maxGap = 0
	}
	o.mu.Unlock()
}

// streamSeq returns the last sequence of the workers bucket's stream.
func (o *observer) streamSeq() (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := o.js.Stream(ctx, "KV_rbee_workers")
	if err != nil {
		return 0, err
	}
	return s.CachedInfo().State.LastSeq, nil
}

// dist summarises samples in milliseconds.
type dist struct {
	N             int
	P50, P99, Max float64
}

func newDist(xs []float64) dist {
	if len(xs) == 0 {
		return dist{}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	q := func(p float64) float64 { return s[int(math.Min(float64(len(s)-1), p*float64(len(s))))] }
	return dist{N: len(s), P50: q(0.5), P99: q(0.99), Max: s[len(s)-1]}
}

func (d dist) String() string {
	if d.N == 0 {
		return "n/a"
	}
	return fmt.Sprintf("p50 %s / p99 %s / max %s (n=%d)", ms(d.P50), ms(d.P99), ms(d.Max), d.N)
}

func ms(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f s", v/1000)
	}
	return fmt.Sprintf("%.0f ms", v)
}

// lastOps reads the last message of each worker key from the store itself,
// not from the watch, and counts them by operation.
func (o *observer) lastOps(keys []string) (dels, purges, puts, none int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := o.js.Stream(ctx, "KV_rbee_workers")
	if err != nil {
		return 0, 0, 0, 0, err
	}
	for _, k := range keys {
		m, err := st.GetLastMsgForSubject(ctx, "$KV.rbee_workers."+k)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			none++
		case err != nil:
			return dels, purges, puts, none, err
		case m.Header.Get("KV-Operation") == "DEL":
			dels++
		case m.Header.Get("KV-Operation") == "PURGE":
			purges++
		default:
			puts++
		}
	}
	return dels, purges, puts, none, nil
}
