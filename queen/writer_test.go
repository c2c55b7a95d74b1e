package queen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
)

type nopMetrics struct{ coalesce int }

func (m *nopMetrics) coalesced(subjects.Kind)           { m.coalesce++ }
func (m *nopMetrics) shed(subjects.Kind, string)        {}
func (m *nopMetrics) writeDone(time.Duration)           {}
func (m *nopMetrics) writeFailed(subjects.Kind, string) {}

func beatOp(key, inst string, seq uint64, acceptedMs int64, status wire.Status) *op {
	return &op{kind: subjects.KindWorker, key: key, instance: inst, seq: seq, acceptedMs: acceptedMs, ttlMs: 3000,
		worker: &wire.WorkerEntry{Worker: wire.Worker{Status: status}}}
}

// testWriter returns a writer of worker keys ("$KV.w.<key>") reporting to
// m, not running.
func testWriter(m writeMetrics) *writer {
	return newWriter(slog.New(slog.DiscardHandler), m, 16, map[subjects.Kind]string{subjects.KindWorker: "$KV.w."})
}

// popAll takes every waiting key in the order the writer would write them
// at nowMs.
func popAll(w *writer, nowMs int64) []*slot {
	var out []*slot
	for s := w.next(nowMs); s != nil; s = w.next(nowMs) {
		out = append(out, s)
		p := s.pend
		s.pend, s.inflight = nil, p
		w.schedule(s)
		s.pend, s.inflight = p, nil
	}
	return out
}

func liveSlot(w *writer, key string, deadline int64) {
	s := newSlot(subjects.KindWorker, key, "$KV.w."+key)
	s.last, s.deadlineMs = beatOp(key, "i", 1, 0, wire.StatusReady), deadline
	w.slots[target{s.kind, s.key}] = s
}

func order(slots []*slot) (keys []string) {
	for _, s := range slots {
		keys = append(keys, s.key)
	}
	return keys
}

// TestQueueOrder: goodbyes go first; a newer beat replacing a waiting one
// keeps the key's place (coalesced, counted); new entries go before
// refreshes that are not yet due; refreshes go in the order their stored
// entries expire.
func TestQueueOrder(t *testing.T) {
	m := &nopMetrics{}
	w := testWriter(m)
	w.eager = true // other queens share the group
	w.put(beatOp("a", "i", 1, 100, wire.StatusReady))
	w.put(beatOp("b", "i", 1, 200, wire.StatusReady))
	w.put(beatOp("a", "i", 2, 300, wire.StatusBusy)) // replaces a's waiting beat
	bye := beatOp("c", "i", 1, 400, wire.StatusReady)
	bye.del, bye.worker = true, nil
	w.put(bye)
	// Two refreshes: stored entries expiring at 5000 and 4000.
	for key, deadline := range map[string]int64{"d": 5000, "e": 4000} {
		liveSlot(w, key, deadline)
		w.put(beatOp(key, "i", 2, 1000, wire.StatusReady))
	}
	if w.waiting != 5 {
		t.Fatalf("%d keys waiting, want 5", w.waiting)
	}
	got := popAll(w, 1000)
	for _, s := range got {
		if s.key == "a" && s.pend.seq != 2 {
			t.Fatalf("a's waiting write is seq %d, want the newest (2)", s.pend.seq)
		}
	}
	if want := "[c a b e d]"; fmt.Sprint(order(got)) != want {
		t.Fatalf("write order %v, want %v", order(got), want)
	}
	if m.coalesce != 1 {
		t.Fatalf("coalesced %d, want 1", m.coalesce)
	}
	if w.waiting != 0 {
		t.Fatalf("%d keys still waiting", w.waiting)
	}
}

// TestQueueLiveFirst: under a backlog of new entries, a refresh whose entry
// is due to expire within urgentMs goes ahead of all of them, so a flood of
// newcomers cannot expire what is already alive; a changed live entry keeps
// its place among the new ones and is still protected by its expiry.
func TestQueueLiveFirst(t *testing.T) {
	w := testWriter(&nopMetrics{})
	w.eager = true // other queens share the group
	const now = 10_000
	for i := range 100 {
		w.put(beatOp(fmt.Sprintf("new%03d", i), "i", 1, int64(i), wire.StatusReady))
	}
	liveSlot(w, "due", now+urgentMinMs-1)
	w.put(beatOp("due", "i", 2, now-10, wire.StatusReady))
	liveSlot(w, "later", now+5000)
	w.put(beatOp("later", "i", 2, now-10, wire.StatusReady))
	liveSlot(w, "changed", now+urgentMinMs/2)
	w.put(beatOp("changed", "i", 2, now-5, wire.StatusBusy))
	got := order(popAll(w, now))
	if len(got) != 103 || got[0] != "changed" || got[1] != "due" || got[2] != "new000" || got[102] != "later" {
		t.Fatalf("write order %v: want changed and due (expiring within %d ms) first, later last", got, urgentMinMs)
	}
}

// TestLapsedRefresh: once the writer has been behind for lapseAfterMs, a
// refresh whose entry has expired by its estimate gives way to a refresh
// that can still be saved and waits with the new entries, until its
// deadline changes. Behind for less (a restarted queen catching up), or
// after lapseQuietMs free of overdue refreshes, the order is earliest
// expiry first.
func TestLapsedRefresh(t *testing.T) {
	const now = 100_000
	setup := func() *writer {
		w := testWriter(&nopMetrics{})
		w.eager = true
		liveSlot(w, "lapsed", now-lapseAfterMs)
		w.put(beatOp("lapsed", "i", 2, now-lapseAfterMs-2000, wire.StatusReady))
		liveSlot(w, "due", now+100)
		w.put(beatOp("due", "i", 2, now-10, wire.StatusReady))
		w.put(beatOp("new", "i", 1, now-5, wire.StatusReady))
		liveSlot(w, "later", now+5000)
		w.put(beatOp("later", "i", 2, now-10, wire.StatusReady))
		return w
	}
	// behind steps the writer's clock from..to, finding the overdue refresh
	// at every step.
	behind := func(w *writer, from, to int64) {
		for ms := from; ms <= to; ms += lapseQuietMs / 2 {
			w.mu.Lock()
			w.lapse(ms)
			w.mu.Unlock()
		}
	}
	earliest := "[lapsed due new later]"
	if got := fmt.Sprint(order(popAll(setup(), now))); got != earliest {
		t.Fatalf("just behind: write order %s, want %s", got, earliest)
	}
	w := setup()
	behind(w, now-lapseAfterMs, now-lapseQuietMs)
	if got := fmt.Sprint(order(popAll(w, now-1))); got != earliest {
		t.Fatalf("behind for less than %d ms: write order %s, want %s", lapseAfterMs, got, earliest)
	}
	w = setup()
	behind(w, now-lapseAfterMs, now)
	if got, want := fmt.Sprint(order(popAll(w, now))), "[due lapsed new later]"; got != want {
		t.Fatalf("behind for %d ms: write order %s, want %s", lapseAfterMs, got, want)
	}
	// Once its deadline changes (a write landed, the watch showed another
	// queen's), a lapsed key is a refresh again.
	s := w.slots[target{subjects.KindWorker, "lapsed"}]
	w.mu.Lock()
	s.deadlineMs = now + 4000
	w.schedule(s)
	w.mu.Unlock()
	if s.idx[qLive] < 0 || s.idx[qNew] >= 0 {
		t.Fatalf("a key with a new deadline is not back among the refreshes: queues %v", s.idx)
	}
	// A writer that caught up for more than lapseQuietMs is behind anew
	// from the next overdue refresh.
	w = testWriter(&nopMetrics{})
	w.eager = true
	liveSlot(w, "k", now)
	w.put(beatOp("k", "i", 2, now-10, wire.StatusReady))
	s = w.slots[target{subjects.KindWorker, "k"}]
	behind(w, now, now+4000)
	w.mu.Lock()
	s.deadlineMs = now + 6000 // its write landed
	w.schedule(s)
	w.lapse(now + 4000 + lapseQuietMs + 1)
	w.mu.Unlock()
	behind(w, now+6000, now+lapseAfterMs+1000)
	if s.idx[qLive] < 0 || s.idx[qNew] >= 0 {
		t.Fatalf("behind for %d ms after catching up, a refresh lapsed: queues %v", lapseAfterMs+1000-6000, s.idx)
	}
	// A writer that lapsed refreshes stays behind through a lull shorter
	// than lapseAfterMs: overload comes in waves.
	w = testWriter(&nopMetrics{})
	w.eager = true
	liveSlot(w, "k", now)
	w.put(beatOp("k", "i", 2, now-10, wire.StatusReady))
	s = w.slots[target{subjects.KindWorker, "k"}]
	behind(w, now, now+lapseAfterMs)
	if s.idx[qNew] < 0 {
		t.Fatalf("behind for %d ms, a refresh past its deadline did not lapse: queues %v", lapseAfterMs, s.idx)
	}
	w.mu.Lock()
	s.deadlineMs = now + lapseAfterMs + 3000 // its write landed
	w.schedule(s)
	w.lapse(now + lapseAfterMs + 2500)
	w.lapse(now + lapseAfterMs + 3000)
	w.mu.Unlock()
	if s.idx[qNew] < 0 {
		t.Fatalf("after a lull of 3000 ms, a refresh past its deadline did not lapse: queues %v", s.idx)
	}
}

// TestBuildTTL: an entry's TTL runs from its write; a beat that waited
// longer than one interval loses the excess; one that waited TTL + one
// interval is shed; a mark keeps the expiry it marks.
func TestBuildTTL(t *testing.T) {
	w := testWriter(&nopMetrics{})
	now := time.Now().UnixMilli()
	for _, c := range []struct {
		waited  int64
		want    string
		shed    bool
		mark    bool
		lazy    bool
		expires int64
	}{
		{waited: 0, want: "3s"},
		{waited: 900, want: "3s"},
		{waited: 1500, want: "3s"}, // 2500 ms left, rounded up
		{waited: 2100, want: "2s"},
		{waited: 4000, shed: true},
		{mark: true, expires: now + 1200, want: "2s"},
		{mark: true, expires: now - 1, shed: true},
		// A lazy refresh: the TTL runs from the beat, rounded down.
		{lazy: true, waited: 500, want: "2s"},
		{lazy: true, waited: 1900, want: "1s"},
		{lazy: true, waited: 2100, shed: true}, // 900 ms left: under a whole second
	} {
		o := beatOp("k", "i", 1, now-c.waited, wire.StatusReady)
		o.intervalMs, o.mark, o.expiresMs = 1000, c.mark, c.expires
		s := newSlot(subjects.KindWorker, "k", "$KV.w.k")
		msg, ok := w.build(s, o, c.lazy)
		switch {
		case ok == c.shed:
			t.Fatalf("%+v: written %v", c, ok)
		case ok && msg.Header.Get(jetstream.MsgTTLHeader) != c.want:
			t.Fatalf("%+v: TTL %q, want %q", c, msg.Header.Get(jetstream.MsgTTLHeader), c.want)
		}
	}
}

// TestLazyRefresh: a lone queen writes a worker's changed beat at once and
// an unchanged one only when its stored entry is due to expire (leadMs
// before), with the newest beat; a hive is written at once; wait does not
// wait for refreshes that are not due, and Backlog leaves them out.
func TestLazyRefresh(t *testing.T) {
	w := newWriter(slog.New(slog.DiscardHandler), &nopMetrics{}, 16, map[subjects.Kind]string{
		subjects.KindWorker: "$KV.w.", subjects.KindHive: "$KV.h."})
	const now = 10_000
	liveSlot(w, "same", now+50_000)
	w.put(lazyOp("same", "i", 2, now, wire.StatusReady))
	w.put(lazyOp("same", "i", 3, now+1, wire.StatusReady)) // newer, still unchanged
	liveSlot(w, "changed", now+50_000)
	w.put(lazyOp("changed", "i", 2, now, wire.StatusBusy))
	liveSlot(w, "new-figure", now+50_000)
	o := lazyOp("new-figure", "i", 2, now+1, wire.StatusReady)
	pct := 93.0
	o.worker.KVCachePercent = &pct
	w.put(o)
	hive := beatOp("hive", "i", 2, now+2, "")
	hive.kind, hive.worker, hive.hive = subjects.KindHive, nil, &wire.HiveEntry{}
	w.put(hive)
	// An unchanged hive beat whose entry expires after the waiting lazy
	// refresh: a hive is refreshed at once all the same.
	old := newSlot(subjects.KindHive, "old-hive", "$KV.h.old-hive")
	old.last, old.deadlineMs = &op{kind: subjects.KindHive, key: "old-hive", instance: "i", hive: &wire.HiveEntry{}}, now+60_000
	w.slots[target{old.kind, old.key}] = old
	o = beatOp("old-hive", "i", 2, now+3, "")
	o.kind, o.worker, o.hive = subjects.KindHive, nil, &wire.HiveEntry{}
	w.put(o)
	if st := w.stats(); st.Backlog != 4 || st.Refreshes != 1 {
		t.Fatalf("backlog %d, refreshes %d: want 4 and 1", st.Backlog, st.Refreshes)
	}
	if got := fmt.Sprint(order(popAll(w, now))); got != "[changed new-figure hive old-hive]" {
		t.Fatalf("written now: %s, want the changed worker entries and both hives", got)
	}
	if !w.nothingDue(now) || !w.nothingDue(now+50_000-minLeadMs-1) {
		t.Fatal("a refresh not yet due counts as due")
	}
	// Refreshes go out in batches: the first to fall due takes with it
	// every refresh due within lazyBatchMs, and none due later.
	liveSlot(w, "same2", now+50_000+lazyBatchMs)
	w.put(lazyOp("same2", "i", 2, now, wire.StatusReady))
	liveSlot(w, "same3", now+50_000+lazyBatchMs+1)
	w.put(lazyOp("same3", "i", 2, now, wire.StatusReady))
	due := int64(now + 50_000 - minLeadMs)
	got := popAll(w, due)
	if len(got) != 2 || got[0].key != "same" || got[0].pend.seq != 3 || got[1].key != "same2" {
		t.Fatalf("due at %d: %v, want same with seq 3 and same2", due, order(got))
	}
	if got := popAll(w, due+lazyBatchMs); len(got) != 0 {
		t.Fatalf("at %d: %v written, want none until same3 falls due", due+lazyBatchMs, order(got))
	}
	if got := popAll(w, due+lazyBatchMs+1); len(got) != 1 || got[0].key != "same3" {
		t.Fatalf("at %d: %v, want same3", due+lazyBatchMs+1, order(got))
	}
	// Once the queen has peers, every waiting refresh goes.
	liveSlot(w, "later", now+500_000)
	w.put(lazyOp("later", "i", 2, now, wire.StatusReady))
	if w.next(now) != nil {
		t.Fatal("a lone queen writes a refresh not yet due")
	}
	w.setEager(true)
	if s := w.next(now); s == nil || s.key != "later" {
		t.Fatalf("with peers: %v, want later", s)
	}
}

// TestWaitingBeatSharesStrings: a waiting beat holds its key's previous
// op's strings where they are equal, not copies of its own, and its own
// where they differ.
func TestWaitingBeatSharesStrings(t *testing.T) {
	w := testWriter(&nopMetrics{})
	const now = 10_000
	liveSlot(w, "k", now+50_000)
	s := w.slots[target{subjects.KindWorker, "k"}]
	s.last.worker.ModelID, s.last.worker.URL, s.last.worker.Version = "model-a", "http://10.0.0.1:8080", "1.0"
	s.last.conn = "srv/7"
	// The key a slice of the beat's subject, and equal values in other
	// memory, as admit and a decoder make them.
	o := lazyOp("rbee.hb.worker.k"[len("rbee.hb.worker."):], strings.Clone("i"), 2, now, wire.StatusReady)
	o.conn = strings.Clone("srv/7")
	o.worker.ModelID, o.worker.URL = strings.Clone("model-a"), strings.Clone("http://10.0.0.1:8080")
	o.worker.Version = strings.Clone("1.1")
	w.put(o)
	p, l := &s.pend.worker.Worker, &s.last.worker.Worker
	if unsafe.StringData(p.ModelID) != unsafe.StringData(l.ModelID) || unsafe.StringData(p.URL) != unsafe.StringData(l.URL) {
		t.Fatal("the waiting beat keeps its own copies of strings equal to the stored op's")
	}
	if unsafe.StringData(s.pend.key) != unsafe.StringData(s.key) || unsafe.StringData(s.pend.instance) != unsafe.StringData(s.last.instance) ||
		unsafe.StringData(s.pend.conn) != unsafe.StringData(s.last.conn) {
		t.Fatal("the waiting op keeps its own key, instance or connection where the slot and the stored op hold equal ones")
	}
	if p.Version != "1.1" || l.Version != "1.0" {
		t.Fatalf("versions %q and %q: a differing string was shared", p.Version, l.Version)
	}
}

// TestLazyRefreshNoWake: an unchanged beat whose refresh is not the first
// to fall due does not wake the writer's goroutine (it sleeps until the
// first one is due); a change, or a refresh that becomes the first, does.
func TestLazyRefreshNoWake(t *testing.T) {
	w := testWriter(&nopMetrics{})
	const now = 10_000
	liveSlot(w, "first", now+50_000)
	liveSlot(w, "second", now+60_000)
	w.put(lazyOp("first", "i", 2, now, wire.StatusReady))
	w.put(lazyOp("second", "i", 2, now, wire.StatusReady))
	before := w.signals
	for seq := uint64(3); seq < 13; seq++ {
		w.put(lazyOp("second", "i", seq, now+int64(seq), wire.StatusReady))
	}
	if w.signals != before {
		t.Fatalf("10 unchanged beats of a refresh not first due woke the writer %d times", w.signals-before)
	}
	if st := w.stats(); st.Refreshes != 2 || st.Backlog != 0 {
		t.Fatalf("refreshes %d, backlog %d: want 2 and 0", st.Refreshes, st.Backlog)
	}
	w.put(lazyOp("first", "i", 3, now+20, wire.StatusReady))
	if w.signals != before+1 {
		t.Fatalf("a beat of the first refresh due: %d wakes, want 1", w.signals-before)
	}
	w.put(lazyOp("second", "i", 13, now+30, wire.StatusBusy))
	if w.signals != before+2 {
		t.Fatalf("a change: %d wakes in all, want 2", w.signals-before)
	}
}

// lazyOp is a worker beat with the default TTL (90 s), refreshed lazily.
func lazyOp(key, inst string, seq uint64, acceptedMs int64, status wire.Status) *op {
	o := beatOp(key, inst, seq, acceptedMs, status)
	o.ttlMs = 90_000
	return o
}

// TestLazyRefreshAfterRestart: a restarted queen compares a beat with what
// its registry mirror shows, so beats that change nothing cost no write
// until their entries are due, and a changed one is written at once.
func TestLazyRefreshAfterRestart(t *testing.T) {
	w := testWriter(&nopMetrics{})
	const now = 100_000
	shown := beatOp("k", "i", 1, now-1000, wire.StatusReady).worker
	shown.InstanceID, shown.Seq, shown.ReceivedAtMs = "i", 1, now-1000
	w.setMirror(func(subjects.Kind, string) (stored, *wire.WorkerEntry) {
		return stored{rev: 7, what: sValue, instance: "i", seq: 1, atMs: now - 1000}, shown
	})
	o := beatOp("k", "i", 2, now, wire.StatusReady)
	o.ttlMs, o.worker.InstanceID, o.worker.Seq = 90_000, "i", 2
	w.put(o)
	if s := w.next(now); s != nil {
		t.Fatalf("an unchanged beat after a restart is written at once (%+v)", w.stats())
	}
	o = beatOp("k", "i", 3, now, wire.StatusBusy)
	o.ttlMs, o.worker.InstanceID, o.worker.Seq = 90_000, "i", 3
	w.put(o)
	if s := w.next(now); s == nil || s.pend.seq != 3 {
		t.Fatal("a changed beat after a restart waits")
	}
}

// TestLazyRefreshWakes: the writer's goroutine sleeps until the first lazy
// refresh falls due and then writes it; a change is written at once.
func TestLazyRefreshWakes(t *testing.T) {
	srv := testutil.Server(t)
	cfg := testConfig(t)
	cfg.Missed = 4 // a TTL of 8 s at 2 s: the refresh falls due 5 s before it ends, 3 s after the write
	q := startTestQueen(t, srv.ClientURL(), cfg)
	// beat is a beat whose entry says the interval its op has: the registry
	// watch then estimates the same expiry as the write (with another
	// interval it pushed the deadline past the entry's TTL, whenever the
	// watch delivered the write after its acknowledgement).
	beat := func(seq uint64) *op {
		o := condBeat("i1", seq, "")
		o.ttlMs, o.intervalMs, o.worker.IntervalMs = 8000, 2000, 2000
		return o
	}
	written(t, q, beat(1))
	first, rev := storedAs(t, q)
	q.w.put(beat(2)) // unchanged: waits until 5 s before the entry expires
	settle(t, q)
	if now, _ := storedAs(t, q); now != first {
		t.Fatalf("an unchanged beat was written at once: %s", now)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, r := storedAs(t, q)
		if got == "i1 seq 2" {
			if r == rev {
				t.Fatal("no new revision")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the refresh never came: stored %q, writer %+v", got, q.w.stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestForgetWaiting: a key whose entry expired while a beat of it waited
// moves from the refreshes to the new entries.
func TestForgetWaiting(t *testing.T) {
	w := testWriter(&nopMetrics{})
	liveSlot(w, "lost", 900)
	w.put(beatOp("lost", "i", 2, 500, wire.StatusReady))
	liveSlot(w, "due", 1200)
	w.put(beatOp("due", "i", 2, 600, wire.StatusReady))
	w.forget(target{subjects.KindWorker, "lost"}, 0, false, "", time.Now().UnixMilli())
	if got := fmt.Sprint(order(popAll(w, 1000))); got != "[due lost]" {
		t.Fatalf("write order %s: want the live entry due to expire first, then the lost one", got)
	}
}

// TestShedWakesWait: a write shed because its TTL ran out while it waited
// is the last one a Stop waits for; wait returns instead of hanging.
func TestShedWakesWait(t *testing.T) {
	w := testWriter(&nopMetrics{})
	stale := beatOp("a", "i", 1, time.Now().Add(-time.Minute).UnixMilli(), wire.StatusReady) // TTL 3 s, a minute old
	w.put(stale)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	idle := make(chan bool, 1)
	go func() { idle <- w.wait(ctx) }()
	checkFor(t, 5*time.Second, func() error { // the waiter is registered before the write is taken
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.idle == nil {
			return errors.New("no waiter yet")
		}
		return nil
	})
	done := make(chan struct{})
	go func() { defer close(done); w.run() }()
	t.Cleanup(func() { w.stop(); <-done })
	if !<-idle {
		t.Fatalf("wait did not return after the only waiting write was shed: %+v", w.stats())
	}
}

// TestStallOnMonotonicClock: a step of the wall clock between two
// housekeeping ticks is no stall; a lone queen stays ok.
func TestStallOnMonotonicClock(t *testing.T) {
	q, err := New(&nats.Conn{}, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	q.reserve.tick(q, now)
	q.reserve.tick(q, now.Add(10*time.Second).Round(0)) // NTP stepped the clock 10 s forward
	q.health.mu.Lock()
	disrupted := time.Now().Before(q.health.disruptedUntil)
	q.health.mu.Unlock()
	if disrupted {
		t.Fatal("a wall-clock step was taken for a stopped queen: registry disrupted")
	}
}

// TestMarkCopiesSharedEntry: a disconnected mark on a waiting beat marks a
// copy of its entry: the waiting beat may be a retried write whose entry the
// registry mirror already shares (known), and that one must not change.
func TestMarkCopiesSharedEntry(t *testing.T) {
	w := testWriter(&nopMetrics{})
	o := beatOp("k", "i", 2, 1000, wire.StatusReady)
	o.conn = "c1"
	shared := o.worker
	w.put(o)
	w.mark(subjects.KindWorker, "k", "c1", nil, 0, 2000)
	s := w.slots[target{subjects.KindWorker, "k"}]
	if shared.Liveness != "" {
		t.Fatalf("the mark changed the shared entry in place: liveness %q", shared.Liveness)
	}
	if s.pend == nil || s.pend.worker == shared || s.pend.worker.Liveness != wire.LivenessDisconnected {
		t.Fatalf("waiting write not marked on a copy: %+v", s.pend)
	}
}

// TestAckWaitSilentStore: writes sent to a store that takes them and never
// answers (a subscriber that swallows them, where a stream would store and
// acknowledge) show as a growing wait for an answer; once the store answers
// again the wait is over.
func TestAckWaitSilentStore(t *testing.T) {
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	swallow, err := nc.SubscribeSync("$KV.w.>")
	if err != nil {
		t.Fatal(err)
	}
	w := testWriter(&nopMetrics{})
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(time.Hour),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, pa *jetstream.PubAck) { w.acked(m, pa) }),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) { w.failed(m, err) }))
	if err != nil {
		t.Fatal(err)
	}
	w.js = js
	w.put(beatOp("a", "i", 1, time.Now().UnixMilli(), wire.StatusReady))
	done := make(chan struct{})
	go func() { defer close(done); w.run() }()
	t.Cleanup(func() { w.stop(); <-done })
	msg, err := swallow.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("the write never reached the store: %v", err)
	}
	checkFor(t, 10*time.Second, func() error {
		if st := w.stats(); st.InFlight != 1 || st.AckWaitMs <= 2*storeSilence.Milliseconds() {
			return fmt.Errorf("want one write waiting past %v, got %+v", 2*storeSilence, st)
		}
		return nil
	})
	// The store answers: a stream's acknowledgement of the write.
	if err := msg.Respond([]byte(`{"stream":"KV_w","seq":1}`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		if st := w.stats(); st.InFlight != 0 || st.AckWaitMs != 0 || st.Failing {
			return fmt.Errorf("want the write acknowledged and no wait, got %+v", st)
		}
		return nil
	})
}

// TestReserveShareBehind: a queen whose own share is behind by more than
// the hold (overloaded) takes a beat from its reserve first; the copy from
// its share that comes later is known as taken, not admitted again and
// refused as a replay.
func TestReserveShareBehind(t *testing.T) {
	q, err := New(&nats.Conn{}, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	q.reserve.held = map[string]heldBeat{}
	q.reserve.on.Store(true)
	q.reserve.awakeMs.Store(mono())
	w := &wire.Worker{HiveID: "h", WorkerID: "w", Status: wire.StatusReady, SlotsTotal: 1,
		Meta: wire.Meta{V: 1, InstanceID: "inst", Seq: 5, IntervalMs: 1000, Health: wire.Healthy}}
	data, err := wire.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: q.scheme.Worker("h", "w"), Data: data, Header: nats.Header{}}
	msg.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
	msg.Header.Set(wire.HeaderSchema, wire.SchemaWorker)
	q.reserve.hold(msg)
	q.reserve.rescue(q, time.Now().Add(2*time.Second))
	q.reserve.awakeMs.Store(mono()) // housekeeping ran: no stall
	q.onMsg(msg)                    // the copy from this queen's share, late
	st := q.Stats()
	rescued := value(q.metrics.rescued.WithLabelValues(string(subjects.KindWorker)))
	if st.Accepted[subjects.KindWorker] != 1 || rescued != 1 || st.Rejected[subscriber.ReasonReplay] != 0 {
		t.Fatalf("accepted %d, rescued %v, refused as replays %d: want 1, 1 and 0",
			st.Accepted[subjects.KindWorker], rescued, st.Rejected[subscriber.ReasonReplay])
	}
	// A newer beat of the key is held as usual and let go when taken.
	w.Seq = 6
	if msg.Data, err = wire.Marshal(w); err != nil {
		t.Fatal(err)
	}
	q.reserve.hold(msg)
	if q.reserve.took(msg) {
		t.Fatal("a newer beat counted as taken from the reserve")
	}
}

// TestRereadEndsOnWatch: a write refused because the key changed (here an
// expiry's marker) is judged again as soon as the registry watch has told
// of a newer message than the write expected, without a read of the key:
// under overload every expiry refuses a write, and reading each key again
// queued the keys behind thousands of reads while more entries expired.
func TestRereadEndsOnWatch(t *testing.T) {
	refused := &jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}
	tg := target{subjects.KindWorker, "h.w"}
	setup := func(watchRev uint64) (*writer, *slot) {
		w := testWriter(&nopMetrics{})
		w.cfg = DefaultConfig()
		w.mu.Lock()
		defer w.mu.Unlock()
		s := w.slotOf(tg)
		s.stored = stored{rev: 5, what: sValue, instance: "i1", seq: 1}
		msg := &nats.Msg{Subject: s.subject, Header: nats.Header{}}
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "5")
		s.inflight, w.inflight[msg] = condBeat("i1", 2, "s/1"), s
		if watchRev > 5 { // the watch delivered the expiry before the refusal came
			s.stored.learn(stored{rev: watchRev, what: sGone})
		}
		w.mu.Unlock()
		w.failed(msg, refused)
		w.mu.Lock()
		return w, s
	}
	state := func(w *writer, s *slot) string {
		w.mu.Lock()
		defer w.mu.Unlock()
		return fmt.Sprintf("rereading %v, %d keys to read, queued %v", s.rereading, len(w.rereads), s.queued)
	}
	const judged = "rereading false, 0 keys to read, queued true"

	w, s := setup(6)
	if got := state(w, s); got != judged {
		t.Fatalf("the watch told of the expiry before the refusal: %s, want %s", got, judged)
	}

	w, s = setup(0)
	if got := state(w, s); got != "rereading true, 1 keys to read, queued false" {
		t.Fatalf("refused with nothing newer known: %s, want the key read again", got)
	}
	w.forget(tg, 5, false, "", time.Now().UnixMilli()) // not newer than the refused write expected
	if got := state(w, s); got != "rereading true, 1 keys to read, queued false" {
		t.Fatalf("after a watch event of revision 5: %s, want the key still read again", got)
	}
	w.forget(tg, 6, false, "", time.Now().UnixMilli())
	if got := state(w, s); got != judged {
		t.Fatalf("after the watch delivered the expiry (revision 6): %s, want %s", got, judged)
	}

	w, s = setup(0)
	now := time.Now().UnixMilli()
	w.observe(tg, 7, &wire.Meta{InstanceID: "i1", Seq: 3, IntervalMs: 10_000}, &wire.Received{ReceivedAtMs: now, FirstSeenMs: now}, nil)
	if got := state(w, s); got != judged {
		t.Fatalf("after the watch delivered another queen's newer beat: %s, want %s", got, judged)
	}
}
