package main

import (
	"fmt"
	"log"
	"math"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
)

// latencyResult is how soon the queen learns that a worker is gone.
type latencyResult struct {
	Workers  int    `json:"workers"`
	Interval string `json:"interval"`
	TTL      string `json:"ttl"`
	// Crashed workers: last beat → expired event, minus the TTL.
	Crashed  int        `json:"crashed"`
	Lateness percentile `json:"expired_lateness_beyond_ttl"`
	// MarkerLateness is the same up to the purge marker's server timestamp
	// (when the store expired the key), before the watch delivered it.
	MarkerLateness percentile `json:"marker_lateness_beyond_ttl"`
	// Graceful workers: goodbye sent → left event.
	Left    int        `json:"left"`
	Goodbye percentile `json:"goodbye_to_left"`
	// Wrong counts events that should not have happened: an expiry of a
	// worker still beating or leaving, a left for a crashed one.
	Wrong    int      `json:"wrong_events"`
	Missing  int      `json:"missing_events"`
	Problems []string `json:"problems,omitempty"`
}

// percentile holds p50/p99/max in milliseconds.
type percentile struct {
	N     int     `json:"n"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	MinMs float64 `json:"min_ms"`
}

func percentiles(ds []time.Duration) percentile {
	if len(ds) == 0 {
		return percentile{}
	}
	slices.Sort(ds)
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(ds)))) - 1
		return float64(ds[max(0, i)].Microseconds()) / 1000
	}
	return percentile{N: len(ds), P50ms: at(0.50), P99ms: at(0.99), MaxMs: at(1), MinMs: float64(ds[0].Microseconds()) / 1000}
}

// eventLog keeps the arrival time of the first event of each type per key.
type eventLog struct {
	mu   sync.Mutex
	at   map[registry.EventType]map[string]time.Time
	srv  map[string]time.Time // server time of the expiry marker
	seen map[registry.EventType]int
}

func newEventLog() *eventLog {
	return &eventLog{at: map[registry.EventType]map[string]time.Time{}, srv: map[string]time.Time{}, seen: map[registry.EventType]int{}}
}

func (l *eventLog) add(ev registry.Event) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen[ev.Type]++
	m := l.at[ev.Type]
	if m == nil {
		m = map[string]time.Time{}
		l.at[ev.Type] = m
	}
	if _, ok := m[ev.Key]; !ok {
		m[ev.Key] = now
		if ev.Type == registry.Expired {
			l.srv[ev.Key] = ev.At
		}
	}
}

func (l *eventLog) count(t registry.EventType) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.at[t])
}

func (l *eventLog) get(t registry.EventType, key string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.at[t][key]
	return v, ok
}

// beater publishes 1 s beats for a set of workers, staggered over the
// interval, built with wire.Marshal like a real worker does.
type beater struct {
	nc       *nats.Conn
	f        *fleet
	interval time.Duration
	workers  []wire.Worker
	seq      []uint64
	next     []time.Time
	last     []time.Time // when the last beat was published
	alive    []bool
}

func (b *beater) beat(i int, goodbye bool) error {
	now := time.Now()
	b.seq[i]++
	w := &b.workers[i]
	w.Stamp(w.InstanceID, b.seq[i], now.UnixMilli(), b.interval.Milliseconds())
	data, err := wire.Marshal(w)
	if err != nil {
		return err
	}
	h := b.f.header
	if goodbye {
		h = b.f.goodbye
	}
	if err := b.nc.PublishMsg(&nats.Msg{Subject: b.f.subjects[i], Data: data, Header: h}); err != nil {
		return err
	}
	b.last[i] = time.Now()
	return nil
}

// tick sends every beat that is due.
func (b *beater) tick(now time.Time) error {
	for i := range b.workers {
		if b.alive[i] && !now.Before(b.next[i]) {
			if err := b.beat(i, false); err != nil {
				return err
			}
			b.next[i] = b.next[i].Add(b.interval)
		}
	}
	return nil
}

// measureLatency runs workers at a 1 s interval against a queen with a 3 s
// TTL; then crashes half of them at once and stops the other half gracefully,
// one goodbye every 2 ms.
func measureLatency(o options) (latencyResult, error) {
	const (
		interval = time.Second
		ttl      = 3 * time.Second
		gap      = 2 * time.Millisecond
	)
	n := o.latWorkers
	r := latencyResult{Workers: n, Interval: interval.String(), TTL: ttl.String()}
	log.Printf("detection latency: %d workers, %s beats, %s TTL", n, interval, ttl)
	f, err := newFleet(n)
	if err != nil {
		return r, err
	}
	dir, err := os.MkdirTemp("", "rbee-bench-latency-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	ev := newEventLog()
	s, err := startQueenStack(dir, false, ttl, ev.add)
	if err != nil {
		return r, err
	}
	defer s.Stop()
	b := &beater{nc: s.gen, f: f, interval: interval, workers: make([]wire.Worker, n), seq: make([]uint64, n),
		next: make([]time.Time, n), last: make([]time.Time, n), alive: make([]bool, n)}
	start := time.Now()
	for i := range n {
		b.workers[i] = sampleWorker(i)
		b.next[i] = start.Add(time.Duration(i) * interval / time.Duration(n))
		b.alive[i] = true
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	// Beat until every worker joined and a full interval more.
	deadline := start.Add(20 * time.Second)
	var joinedAt time.Time
	for now := range tick.C {
		if err := b.tick(now); err != nil {
			return r, err
		}
		if joinedAt.IsZero() && ev.count(registry.Joined) == n {
			joinedAt = now
		}
		if !joinedAt.IsZero() && now.Sub(joinedAt) > interval+interval/2 {
			break
		}
		if now.After(deadline) {
			return r, fmt.Errorf("%d of %d workers joined", ev.count(registry.Joined), n)
		}
	}
	// Nothing may have expired or left while every worker was beating.
	r.Wrong += ev.count(registry.Expired) + ev.count(registry.Left)
	// Crash the even workers now; the odd ones beat on until their goodbye.
	goodbyeAt := map[int]time.Time{}
	var leaving []int
	for i := range n {
		if i%2 == 0 {
			b.alive[i] = false
			r.Crashed++
		} else {
			leaving = append(leaving, i)
		}
	}
	r.Left = len(leaving)
	crashAt := time.Now()
	nextGoodbye := crashAt
	for now := range tick.C {
		for len(leaving) > 0 && !now.Before(nextGoodbye) {
			i := leaving[0]
			leaving = leaving[1:]
			b.alive[i] = false
			if err := b.beat(i, true); err != nil {
				return r, err
			}
			goodbyeAt[i] = b.last[i]
			nextGoodbye = nextGoodbye.Add(gap)
		}
		if err := b.tick(now); err != nil {
			return r, err
		}
		if len(leaving) == 0 && ev.count(registry.Expired)+ev.count(registry.Left) >= n {
			break
		}
		if now.Sub(crashAt) > ttl+15*time.Second {
			break
		}
	}
	var late, marker, bye []time.Duration
	for i := range n {
		key := f.keys[i]
		exp, expOK := ev.get(registry.Expired, key)
		left, leftOK := ev.get(registry.Left, key)
		if i%2 == 0 {
			if leftOK {
				r.Wrong++
			}
			if !expOK {
				r.Missing++
				continue
			}
			late = append(late, exp.Sub(b.last[i])-ttl)
			ev.mu.Lock()
			marker = append(marker, ev.srv[key].Sub(b.last[i])-ttl)
			ev.mu.Unlock()
			continue
		}
		if expOK {
			r.Wrong++
		}
		if !leftOK {
			r.Missing++
			continue
		}
		bye = append(bye, left.Sub(goodbyeAt[i]))
	}
	if r.Wrong+r.Missing > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d wrong and %d missing events", r.Wrong, r.Missing))
	}
	if err := s.qerrs.err(); err != nil {
		r.Problems = append(r.Problems, err.Error())
	}
	r.Lateness, r.MarkerLateness, r.Goodbye = percentiles(late), percentiles(marker), percentiles(bye)
	return r, nil
}
