package main

import (
	"fmt"
	"log"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// livenessResult is how soon the queen learns that a worker is gone.
type livenessResult struct {
	Workers   int      `json:"workers"`
	Intervals []string `json:"intervals"`
	Missed    int      `json:"missed"`
	Crashed   int      `json:"crashed"`
	Left      int      `json:"left"`
	// Disconnected: connection closed → disconnected event.
	Disconnected percentile `json:"crash_to_disconnected"`
	// Expired: last beat + the worker's own TTL → expired event; Marker the
	// same up to the purge marker's server timestamp.
	Expired percentile `json:"expired_beyond_own_ttl"`
	Marker  percentile `json:"purge_marker_beyond_own_ttl"`
	// Goodbye: goodbye sent → left event.
	Goodbye percentile `json:"goodbye_to_left"`
	// Advisories counts the DISCONNECT advisories the broker published for
	// the crashed connections; ConnKnown the workers whose registry entry
	// held their conn before the crash. Both are needed for disconnected.
	Advisories int `json:"disconnect_advisories_seen"`
	ConnKnown  int `json:"entries_with_conn"`
	// Wrong counts events that should not have happened: an expiry, leave or
	// disconnect of a worker still beating, a left for a crashed one, a
	// disconnect or expiry of one that said goodbye.
	Wrong    int            `json:"wrong_events"`
	WrongBy  map[string]int `json:"wrong_events_by_kind,omitempty"`
	Missing  int            `json:"missing_events"`
	Problems []string       `json:"problems,omitempty"`
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
		return float64(ds[max(0, int(math.Ceil(p*float64(len(ds))))-1)].Microseconds()) / 1000
	}
	return percentile{N: len(ds), P50ms: at(0.50), P99ms: at(0.99), MaxMs: at(1), MinMs: at(0)}
}

// eventLog keeps the arrival time of the first event of each type per key,
// and the server time of each expiry's purge marker.
type eventLog struct {
	mu    sync.Mutex
	first map[[2]string]time.Time // {type, key}
	n     map[registry.EventType]int
	srv   map[string]time.Time
}

func (l *eventLog) add(ev registry.Event) {
	if ev.Kind != subjects.KindWorker {
		return // the queen's own entry
	}
	now, k := time.Now(), [2]string{string(ev.Type), ev.Key}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.first[k]; !ok {
		l.first[k], l.n[ev.Type] = now, l.n[ev.Type]+1
		if ev.Type == registry.Expired {
			l.srv[ev.Key] = ev.At
		}
	}
}

func (l *eventLog) get(t registry.EventType, key string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.first[[2]string{string(t), key}]
	return v, ok
}

func (l *eventLog) count(t registry.EventType) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[t]
}

// liveWorker is one simulated worker on its own connection.
type liveWorker struct {
	nc       *nats.Conn
	w        wire.Worker
	subject  string
	key      string
	interval time.Duration
	ttl      time.Duration
	next     time.Time
	last     time.Time // when the last beat was published
	gone     time.Time // when it crashed or sent its goodbye
	alive    bool
}

func (lw *liveWorker) beat(header nats.Header) error {
	now := time.Now()
	lw.w.Stamp(lw.w.InstanceID, lw.w.Seq+1, now.UnixMilli(), lw.interval.Milliseconds())
	lw.w.StampConn(natsconn.ID(lw.nc))
	data, err := wire.Marshal(&lw.w)
	if err == nil {
		err = lw.nc.PublishMsg(&nats.Msg{Subject: lw.subject, Data: data, Header: header})
	}
	lw.last = now
	return err
}

// measureLiveness runs n workers, each on its own connection, half at a 1 s
// and half at a 2 s interval, against a queen with Advisories on. Once all
// have joined, the even ones crash at the same instant (connection closed,
// no goodbye) and the odd ones leave, one goodbye every 2 ms, closing their
// connection after it.
func measureLiveness(n int) (livenessResult, error) {
	ev := &eventLog{first: map[[2]string]time.Time{}, n: map[registry.EventType]int{}, srv: map[string]time.Time{}}
	st, err := startStack(func(c *queen.Config) {
		c.Missed, c.MaxTTL, c.Advisories, c.OnEvent = 3, time.Minute, true, ev.add
	})
	if err != nil {
		return livenessResult{}, err
	}
	defer st.Stop()
	if _, err := st.startQueen(); err != nil {
		return livenessResult{}, err
	}
	r := livenessResult{Workers: n, Intervals: []string{"1s", "2s"}, Missed: st.cfg.Missed}
	log.Printf("liveness: %d workers on their own connections, 1 s and 2 s intervals (load %s)", n, loadAvg())
	var advisories atomic.Int64
	if _, err := st.gen.Subscribe(queen.DisconnectAdvisories, func(*nats.Msg) { advisories.Add(1) }); err != nil {
		return r, err
	}
	f, err := newFleet(n)
	if err != nil {
		return r, err
	}
	bye := nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker},
		wire.HeaderEvent: {wire.EventGoodbye}}
	ws := make([]*liveWorker, n)
	start := time.Now()
	for i := range ws {
		lw := &liveWorker{w: sampleWorker(i), subject: f.subjects[i], key: f.keys[i], interval: time.Second, alive: true}
		if i%4 >= 2 {
			lw.interval = 2 * time.Second
		}
		lw.ttl = time.Duration((int64(st.cfg.Missed)*lw.interval.Milliseconds()+999)/1000) * time.Second
		lw.next = start.Add(time.Duration(i) * lw.interval / time.Duration(n))
		if lw.nc, err = st.connect(fmt.Sprintf("bench-worker-%d", i)); err != nil {
			return r, err
		}
		defer lw.nc.Close()
		ws[i] = lw
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	beatDue := func(now time.Time) error {
		for _, lw := range ws {
			if lw.alive && !now.Before(lw.next) {
				if err := lw.beat(f.header); err != nil {
					return err
				}
				lw.next = lw.next.Add(lw.interval)
			}
		}
		return nil
	}
	// Beat until every worker joined, then two more seconds.
	var joinedAt time.Time
	for now := range tick.C {
		if err := beatDue(now); err != nil {
			return r, err
		}
		if joinedAt.IsZero() && ev.count(registry.Joined) == n {
			joinedAt = now
		}
		if !joinedAt.IsZero() && now.Sub(joinedAt) > 2*time.Second {
			break
		}
		if now.Sub(start) > 30*time.Second {
			return r, fmt.Errorf("%d of %d workers joined", ev.count(registry.Joined), n)
		}
	}
	r.WrongBy = map[string]int{}
	wrong := func(what string) { r.Wrong++; r.WrongBy[what]++ }
	for _, t := range []registry.EventType{registry.Expired, registry.Left, registry.Disconnected} {
		for range ev.count(t) {
			wrong(string(t) + " while beating")
		}
	}
	if reg := st.q.Registry(); reg != nil {
		for _, lw := range ws {
			if e, _, ok := reg.Worker(lw.key); ok && e.Conn != "" {
				r.ConnKnown++
			}
		}
	}
	advisories.Store(0)
	crashAt := time.Now()
	var leaving []*liveWorker
	for i, lw := range ws {
		if i%2 == 1 {
			leaving = append(leaving, lw)
			continue
		}
		lw.alive, lw.gone = false, time.Now()
		lw.nc.Close() // no goodbye: the server sees the connection close
		r.Crashed++
	}
	r.Left = len(leaving)
	nextBye := crashAt
	for now := range tick.C {
		for len(leaving) > 0 && !now.Before(nextBye) {
			lw := leaving[0]
			leaving, lw.alive = leaving[1:], false
			if err := lw.beat(bye); err != nil {
				return r, err
			}
			lw.gone = lw.last
			_ = lw.nc.Flush()
			lw.nc.Close()
			nextBye = nextBye.Add(2 * time.Millisecond)
		}
		if err := beatDue(now); err != nil {
			return r, err
		}
		if len(leaving) == 0 && ev.count(registry.Expired)+ev.count(registry.Left) >= n || now.Sub(crashAt) > 20*time.Second {
			break
		}
	}
	time.Sleep(200 * time.Millisecond) // let late wrong events arrive before counting them
	r.Advisories = int(advisories.Load())
	var disc, late, marker, left []time.Duration
	for i, lw := range ws {
		d, dOK := ev.get(registry.Disconnected, lw.key)
		x, xOK := ev.get(registry.Expired, lw.key)
		l, lOK := ev.get(registry.Left, lw.key)
		if i%2 == 1 {
			if dOK {
				wrong("disconnected after a goodbye")
			}
			if xOK {
				wrong("expired after a goodbye")
			}
			if !lOK {
				r.Missing++
				continue
			}
			left = append(left, l.Sub(lw.gone))
			continue
		}
		if lOK {
			wrong("left after a crash")
		}
		if dOK {
			disc = append(disc, d.Sub(lw.gone))
		}
		if !xOK {
			r.Missing++
			continue
		}
		late = append(late, x.Sub(lw.last.Add(lw.ttl)))
		ev.mu.Lock()
		marker = append(marker, ev.srv[lw.key].Sub(lw.last.Add(lw.ttl)))
		ev.mu.Unlock()
	}
	if len(disc) < r.Crashed {
		r.Problems = append(r.Problems, fmt.Sprintf("%d of %d crashed workers were marked disconnected (%d DISCONNECT advisories seen, %d of %d entries held their conn)",
			len(disc), r.Crashed, r.Advisories, r.ConnKnown, n))
	}
	if r.Wrong+r.Missing > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d wrong events %v and %d missing", r.Wrong, r.WrongBy, r.Missing))
	}
	r.Disconnected, r.Expired, r.Marker, r.Goodbye = percentiles(disc), percentiles(late), percentiles(marker), percentiles(left)
	return r, nil
}
