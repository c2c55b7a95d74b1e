package integration

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
)

// startThrottledQueen starts a queen whose registry writes cost a round trip
// of about 2 × latency each with at most window in flight, behind a
// toxiproxy latency toxic: a slow store whose capacity is window / RTT
// writes per second, whatever the machine's speed.
func startThrottledQueen(t *testing.T, url string, ttl, latency time.Duration, window int) *queen.Queen {
	t.Helper()
	p, purl := newProxy(t, url)
	addToxic(t, p, fmt.Sprintf(`{"name":"slow_store","type":"latency","stream":"downstream","attributes":{"latency":%d}}`, latency.Milliseconds()))
	cfg := queen.DefaultConfig()
	cfg.Missed = missedOf(ttl)
	cfg.MaxInFlight = window
	q, _ := startQueenConfig(t, purl, cfg)
	return q
}

// TestStressOverloadThrottledStore offers about twice what a throttled store
// can write (400 load workers beating every second against about 200 writes/s),
// with a TTL of 3 beats: keys ÷ TTL (133/s) fits the capacity, keys ÷
// interval does not. It asserts, as issue 9 demands:
//   - no healthy worker (on its own connection) expires;
//   - no load worker expires while it is beating;
//   - every goodbye sent in the middle of the load deletes its key, none of
//     those keys expires first, and the goodbyes overtake the backlog of
//     beats (some beat sent before them is written after them);
//   - no beat is written more than 2 TTLs after it was sent;
//   - every beat sent is accepted, rejected, counted as dropped or superseded before admitting: none
//     vanishes silently.
func TestStressOverloadThrottledStore(t *testing.T) {
	const (
		interval = time.Second
		ttl      = 3 * interval
		loadKeys = 400
		byes     = 40
	)
	srv := testutil.Server(t)
	q := startThrottledQueen(t, srv.ClientURL(), ttl, 20*time.Millisecond, 4)
	w := watchWorkers(t, srv.ClientURL())
	hnc := conn(t, srv.ClientURL(), "healthy")
	for i := range 20 {
		startWorker(t, hnc, "healthy", fmt.Sprintf("w%d", i), interval)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { p, _ := w.present(hiveKeys("healthy"), time.Time{}); return p == 20 },
		"20 healthy workers registered: %s", w)

	t0 := time.Now()
	load := startRawLoad(t, srv.ClientURL(), "load", loadKeys)
	window(5 * time.Second)
	byeAt := time.Now()
	load.goodbye(t, byes)
	window(4 * time.Second)
	sent, stopAt := load.stop()

	// Every goodbye arrives as a delete, not as an expiry.
	testutil.Eventually(t, 30*time.Second, func() bool {
		for i := range byes {
			if l, _ := w.left(load.key(i)); !l {
				return false
			}
		}
		return true
	}, "every goodbye deleted its key: %s", w)
	for i := range byes {
		if _, expired := w.left(load.key(i)); expired {
			t.Errorf("%s expired before its goodbye was written", load.key(i))
		}
	}
	// Goodbyes do not wait behind beats: the slowest goodbye (sent → deleted)
	// is faster than the beats of other keys written meanwhile (sent →
	// written), which wait their turn in the throttled store: those written
	// from the goodbyes' send to the last delete or two seconds after.
	isBye := func(k string) bool {
		for i := range byes {
			if k == load.key(i) {
				return true
			}
		}
		return false
	}
	var lastDel time.Time
	ops := w.ops(hiveKeys("load"))
	for _, o := range ops {
		if o.op == jetstream.KeyValueDelete && isBye(o.key) {
			lastDel = o.at
		}
	}
	var beatLags []time.Duration
	until := byeAt.Add(2 * time.Second) // enough beats to compare with
	if lastDel.After(until) {
		until = lastDel
	}
	for _, o := range ops {
		if o.op == jetstream.KeyValuePut && !isBye(o.key) && !o.at.Before(byeAt) && !o.at.After(until) {
			beatLags = append(beatLags, o.at.Sub(o.sentAt))
		}
	}
	slices.Sort(beatLags)
	byeLag := lastDel.Sub(byeAt)
	t.Logf("slowest goodbye: %s from the goodbyes' send to its delete; %d beats written meanwhile, median %s from send to write",
		byeLag.Round(time.Millisecond), len(beatLags), median(beatLags).Round(time.Millisecond))
	if len(beatLags) == 0 || byeLag >= median(beatLags) {
		t.Errorf("the goodbyes waited behind the beats: slowest goodbye %s, %d beats written meanwhile (median %s)\n%s",
			byeLag, len(beatLags), median(beatLags), w)
	}
	// No beat is written long (2 TTLs) after it was sent.
	var late []string
	for _, o := range append(ops, w.ops(hiveKeys("healthy"))...) {
		if o.op == jetstream.KeyValuePut && o.at.Sub(o.sentAt) > 2*ttl {
			late = append(late, fmt.Sprintf("%s %s late", o.key, o.at.Sub(o.sentAt).Round(time.Millisecond)))
		}
	}
	if len(late) > 0 {
		t.Errorf("%d beats written more than 2 TTLs after they were sent, e.g. %v", len(late), late[:min(5, len(late))])
	}
	if got := w.expiredBetween(hiveKeys("load"), t0, stopAt); len(got) > 0 {
		t.Errorf("%d load workers expired while beating: %v\n%s", len(got), got[:min(len(got), 10)], w)
	}
	if got := w.expiredSince(hiveKeys("healthy"), t0); len(got) > 0 {
		t.Errorf("%d healthy workers expired under load: %v\n%s", len(got), got, w)
	}

	// Accounting: the load's beats are all accepted, rejected, counted as
	// dropped or superseded before admitting, once the queen has worked through what it holds.
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		acc := counterSum(t, q.Collector(), "beats_accepted", "kind=worker")
		rej := counterSum(t, q.Collector(), "rejected", "kind=worker")
		drop := counterSum(t, q.Collector(), "beats_dropped")
		sup := counterSum(t, q.Collector(), "beats_superseded", "kind=worker")
		healthy := 0.0
		for i := range 20 {
			if e, _ := w.get(fmt.Sprintf("healthy.w%d", i)); e != nil {
				healthy += float64(e.Seq)
			}
		}
		// The healthy workers' beats are counted by their seqs (each starts at 1).
		if rej != 0 { // every beat is genuine: none may be taken for a replay
			return fmt.Errorf("%.0f genuine beats rejected", rej)
		}
		got := acc + rej + drop + sup - healthy
		if math.Abs(got-float64(sent)) > 40 { // the healthy seqs are read up to a beat apart from the counters
			return fmt.Errorf("not every beat accounted for: load sent %d; queen counted accepted %.0f + rejected %.0f + dropped %.0f + superseded %.0f − healthy ≈ %.0f",
				sent, acc, rej, drop, sup, got)
		}
		return nil
	})
}

// median returns the middle of sorted ds, 0 for none.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[len(ds)/2]
}
