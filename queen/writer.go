package queen

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"golang.org/x/time/rate"
)

// op is one registry write waiting for its turn: the newest accepted beat
// of a key, its goodbye (a delete), or a liveness mark.
type op struct {
	kind       subjects.Kind
	key        string
	del        bool // a goodbye: delete the key
	worker     *wire.WorkerEntry
	hive       *wire.HiveEntry
	queen      *wire.QueenEntry
	ttlMs      int64 // the entry's TTL
	intervalMs int64 // the sender's interval
	acceptedMs int64 // queen clock when the beat was accepted
	// expiresMs is when the written entry expires (set when the write is
	// sent); for a mark, the expiry it keeps. 0: not yet known.
	expiresMs int64
	instance  string
	seq       uint64
	conn      string
	mark      bool // a liveness mark, not a beat
	attempts  int
	sentAt    time.Time
	slot      *slot // the key's slot, if admit knew it; else put looks it up
}

func (o *op) received() *wire.Received {
	switch {
	case o.worker != nil:
		return &o.worker.Received
	case o.hive != nil:
		return &o.hive.Received
	case o.queen != nil:
		return &o.queen.Received
	}
	return nil
}

func (o *op) encode() ([]byte, error) {
	switch {
	case o.worker != nil:
		return wire.Marshal(o.worker)
	case o.hive != nil:
		return wire.Marshal(o.hive)
	default:
		return wire.Marshal(o.queen)
	}
}

// notable reports whether o changes what a reader of the registry sees
// beyond a refresh: such writes go before refreshes under load.
func notable(prev, o *op) bool {
	if prev == nil || prev.instance != o.instance || prev.del != o.del {
		return true
	}
	pr, r := prev.received(), o.received()
	if pr == nil || r == nil || pr.Liveness != r.Liveness || pr.Conflict != r.Conflict {
		return true
	}
	switch {
	case o.worker != nil && prev.worker != nil:
		return !sameWorker(&prev.worker.Worker, &o.worker.Worker)
	case o.hive != nil && prev.hive != nil:
		return prev.hive.Health != o.hive.Health || len(prev.hive.Workers) != len(o.hive.Workers) ||
			prev.hive.WorkersOmitted != o.hive.WorkersOmitted
	case o.queen != nil && prev.queen != nil:
		return prev.queen.State != o.queen.State
	}
	return true
}

// sameWorker reports whether two beats of a worker show a reader the same
// thing: they differ at most in seq, sent_at_ms, progress and the engine
// reading's age, which a refresh carries.
func sameWorker(a, b *wire.Worker) bool {
	x, y := *a, *b
	x.Seq, y.Seq, x.SentAtMs, y.SentAtMs = 0, 0, 0, 0
	x.EngineAgeMs, y.EngineAgeMs = 0, 0
	x.Progress, y.Progress = nil, nil
	if !eqPtr(x.RequestsWaiting, y.RequestsWaiting) || !eqPtr(x.KVCachePercent, y.KVCachePercent) {
		return false
	}
	x.RequestsWaiting, y.RequestsWaiting, x.KVCachePercent, y.KVCachePercent = nil, nil, nil, nil
	return x == y
}

// shareStrings points w's strings at p's where they are equal, so a
// waiting beat holds no second copy of what its key's previous op holds:
// a lone queen keeps two ops of every key (the stored one and the newest
// beat), and each held its own copy of the key's IDs, model, URL and
// version. Strings are immutable, so no value changes.
func shareStrings(w, p *wire.Worker) {
	share(&w.InstanceID, p.InstanceID)
	share(&w.Health, p.Health)
	share(&w.HealthReason, p.HealthReason)
	share(&w.Conn, p.Conn)
	share(&w.HiveID, p.HiveID)
	share(&w.WorkerID, p.WorkerID)
	share(&w.Status, p.Status)
	share(&w.ModelID, p.ModelID)
	share(&w.Device, p.Device)
	share(&w.URL, p.URL)
	share(&w.Version, p.Version)
	share(&w.Engine, p.Engine)
}

func share[S ~string](a *S, b S) {
	if *a == b {
		*a = b
	}
}

func eqPtr[T comparable](a, b *T) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// slot is one registry key with something to write. At most one write of a
// key is in flight, so a key's writes land in the order they were accepted
// and a beat is never written after a newer one.
type slot struct {
	kind     subjects.Kind
	key      string
	subject  string
	pend     *op // newest op waiting; nil if none
	inflight *op
	sent     []byte // the bytes of inflight's value as sent; nil for a delete or none
	last     *op    // last op the store acknowledged (not a delete)
	// stored is the newest message of the key's subject this queen knows
	// (a value, a goodbye's DEL, an expiry's marker), from its own
	// acknowledgements, the registry mirror and watch, and re-reads. Every
	// write is judged against it and expects its revision (conditional.go).
	stored stored
	// rereading: the last write found the key changed by someone else; it
	// waits for the stored value to be read again and the write decided anew.
	// rereadOver is the revision the refused write expected: the watch
	// telling of a newer message ends the wait as a read does (watched).
	rereading  bool
	rereadOver uint64
	// goneMs is when the key was last seen gone with nothing to write (queen
	// clock): the slot is kept for what it knows of the stored message, so
	// a sender that comes back is written over it at once, and swept later.
	goneMs int64
	// deadlineMs estimates when the stored entry expires (queen clock),
	// never later than it does: from this queen's acknowledged write or
	// from what the registry shows another queen wrote. 0: no entry known.
	deadlineMs int64
	// lapsedMs is the deadline a waiting refresh was found past while the
	// writer was behind (lapse): it then waits with the new entries until
	// the deadline changes.
	lapsedMs int64
	idx      [nQueues]int // index in each queue, -1 when not in it
	queued   bool
	urgent   bool
	// lazy: the waiting write is a refresh that changes nothing a reader
	// sees, held in qLazy; a lone queen writes it only once it falls due
	// (dueMs).
	lazy bool
	// dueAt is dueMs while the key is in qLazy, set by schedule: the
	// heap's order reads it without following pend.
	dueAt int64
	// since is the accept time of the oldest op waiting since the key's last
	// write: a newer beat replacing a waiting one keeps the key's place.
	since int64
	// snd is what the tracker knows of the key's senders (tracker.go);
	// tracked once a beat was accepted or a value observed.
	snd     sender
	tracked bool
}

// The writer's queues. A waiting key is in qFirst, in qLazy, or in qLive,
// qNew or both.
const (
	qFirst = iota // goodbyes and disconnected marks, by accept time
	qLive         // keys with a stored entry, by the entry's expiry
	qNew          // new or changed entries, by accept time
	qLazy         // a lone queen's lazy refreshes, by when they fall due
	nQueues
)

// queue is one of the writer's heaps of waiting keys.
type queue struct {
	which int
	s     []*slot
}

func (q *queue) Len() int { return len(q.s) }
func (q *queue) Less(i, j int) bool {
	a, b := q.s[i], q.s[j]
	switch q.which {
	case qLive:
		return a.deadlineMs < b.deadlineMs
	case qLazy:
		return a.dueAt < b.dueAt
	}
	return a.since < b.since
}
func (q *queue) Swap(i, j int) {
	q.s[i], q.s[j] = q.s[j], q.s[i]
	q.s[i].idx[q.which], q.s[j].idx[q.which] = i, j
}
func (q *queue) Push(x any) { s := x.(*slot); s.idx[q.which] = len(q.s); q.s = append(q.s, s) }
func (q *queue) Pop() any {
	n := len(q.s) - 1
	s := q.s[n]
	q.s[n] = nil
	q.s = q.s[:n]
	s.idx[q.which] = -1
	return s
}

// urgentMs is how long before its stored entry expires a refresh goes ahead
// of new and changed entries: one of the key's intervals, at least
// urgentMinMs, so the write lands before the entry expires.
const urgentMinMs = 500

func urgentMs(o *op) int64 { return max(o.intervalMs, urgentMinMs) }

// next returns the key to write now, nil if none. Keeping what is alive
// alive comes first, and a key needs one write per TTL, not one per beat, so
// under overload every entry stays alive as long as the store can take
// keys ÷ TTL writes per second; new and changed entries take what is left.
// Order: goodbyes and marks; refreshes of entries due to expire within
// urgentMs; new and changed entries, with the refreshes that lapsed
// (lapse); other refreshes, earliest expiry first. A lone queen's lazy
// refresh takes part only once it falls due, in batches (lazyBatchMs).
// mu held.
func (w *writer) next(nowMs int64) *slot {
	first, live, fresh := &w.qs[qFirst], &w.qs[qLive], &w.qs[qNew]
	w.lapse(nowMs)
	var refresh *slot // the refresh that expires first, of those due
	if live.Len() > 0 {
		refresh = live.s[0]
	}
	if lz := &w.qs[qLazy]; lz.Len() > 0 {
		s, due := lz.s[0], dueMs(lz.s[0])
		if nowMs >= due {
			w.lazyCutMs = nowMs + lazyBatchMs // the batch: every refresh due by then
		}
		if due <= w.lazyCutMs && (refresh == nil || s.deadlineMs < refresh.deadlineMs) {
			refresh = s
		}
	}
	switch {
	case first.Len() > 0:
		return first.s[0]
	case refresh != nil && refresh.deadlineMs-nowMs <= urgentMs(refresh.pend):
		return refresh
	case fresh.Len() > 0:
		return fresh.s[0]
	}
	return refresh
}

// A writer is behind while it finds refreshes past their deadline, with
// no lapseQuietMs free of them; once behind for lapseAfterMs, it is
// overloaded, not catching up (a restarted queen, whose deadlines read from
// the registry are up to a second early, catches up within a few seconds),
// and stays so until lapseAfterMs pass free of them.
const (
	lapseAfterMs = 10_000
	lapseQuietMs = 1000
)

// lapse, once the writer has been behind for lapseAfterMs, moves the
// refreshes whose entries have expired by its estimate to the new entries.
// Earliest expiry first is the right order only while the writer keeps up:
// once it is overloaded, the refresh that expires first has often expired
// already, its write is refused (the server's marker is newer) and read
// again, and the refreshes that could still be saved wait behind it until
// they expire too. A lapsed refresh gives way to those and is written as a
// new entry, so a store that writes C entries per second keeps about C ×
// TTL of them alive, not none. mu held.
//
// Only the heads are looked at: qLazy is ordered by due time, which is the
// deadline order while the lazy keys share one interval (lead); a key of a
// shorter interval past its deadline behind the head waits for its turn
// there, in the order of before.
func (w *writer) lapse(nowMs int64) {
	overdue := false
	for _, q := range []*queue{&w.qs[qLive], &w.qs[qLazy]} {
		overdue = overdue || q.Len() > 0 && q.s[0].deadlineMs <= nowMs
	}
	switch {
	case overdue:
		w.overdueMs = nowMs
		if w.behindMs == 0 {
			w.behindMs = nowMs
		}
	case w.lapsing && nowMs-w.overdueMs > lapseAfterMs:
		w.lapsing, w.behindMs = false, 0
		w.log.Info("the registry writer caught up: refreshes go in the order their entries expire")
	case !w.lapsing && nowMs-w.overdueMs > lapseQuietMs:
		w.behindMs = 0
	}
	if !overdue || nowMs-w.behindMs < lapseAfterMs {
		return
	}
	if !w.lapsing {
		w.lapsing = true
		w.log.Warn("the registry writer is overloaded: refreshes past their entry's expiry now wait behind those it can still save",
			"behind", time.Duration(nowMs-w.behindMs)*time.Millisecond, "waiting", w.waiting)
	}
	for _, q := range []*queue{&w.qs[qLive], &w.qs[qLazy]} {
		for q.Len() > 0 && q.s[0].deadlineMs <= nowMs {
			s := q.s[0]
			s.lapsedMs = s.deadlineMs
			w.schedule(s)
		}
	}
}

// minLeadMs is the least time a lazy refresh is written before its entry
// expires: a queen restarted or replaced within it loses no entry.
const minLeadMs = 5000

// leadMs is how long before its entry expires a lazy refresh is due: half
// the sender's interval, at least minLeadMs. Less than one interval, so the
// newest beat is two intervals newer than the stored one by then and a live
// worker costs a write every Missed − 1 intervals (a lead of one interval
// would meet each next beat and write every one).
func leadMs(o *op) int64 { return max(o.intervalMs/2, minLeadMs) }

// lazyKind reports whether o's key is refreshed lazily by a lone queen: a
// worker whose TTL leaves room for a refresh leadMs before it expires (a
// shorter one is written at every beat).
func lazyKind(o *op) bool { return o.kind == subjects.KindWorker && leadMs(o)+1000 < o.ttlMs }

// lazyBatchMs is how far ahead of its due time a lone queen's lazy refresh
// goes with the refresh that falls due first: when one falls due, every
// refresh due within lazyBatchMs is written with it (lazyCutMs). One wake
// of the writer then sends a batch, and the store reads it, answers it and
// feeds the watch in a few system calls, where writing each as it fell due
// cost a wake and a system call of each per refresh. Early, never late, so
// an entry still has at least minLeadMs left when it is refreshed.
const lazyBatchMs = 250

// dueMs is when s's waiting lazy refresh falls due.
func dueMs(s *slot) int64 { return s.deadlineMs - leadMs(s.pend) }

// nothingDue reports whether no write is due now: nothing waits but lazy
// refreshes not yet due. mu held.
func (w *writer) nothingDue(nowMs int64) bool {
	lz := &w.qs[qLazy]
	return w.waiting == w.lazies && (lz.Len() == 0 || nowMs < dueMs(lz.s[0]))
}

// setEager makes every waiting write go as soon as the store takes it
// (other queens share the group: their reserves judge by what is written),
// or lets a lone queen write a refresh only when its entry is due to expire.
func (w *writer) setEager(eager bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.eager == eager {
		return
	}
	w.eager = eager
	var move []*slot // the refreshes that change queue
	for _, q := range []*queue{&w.qs[qLive], &w.qs[qLazy]} {
		for _, s := range q.s {
			if s.lazy == eager {
				move = append(move, s)
			}
		}
	}
	for _, s := range move {
		w.schedule(s)
	}
	w.cond.Broadcast()
}

// writeMetrics is what the writer reports to; *metrics implements it.
type writeMetrics interface {
	coalesced(k subjects.Kind)
	shed(k subjects.Kind, reason string)
	writeDone(d time.Duration)
	writeFailed(k subjects.Kind, outcome string)
}

// writerStats is a snapshot of the writer's state.
type writerStats struct {
	Backlog     int   // keys waiting to be written, lazy refreshes aside
	Refreshes   int   // lazy refreshes waiting for their entry to fall due
	InFlight    int   // writes awaiting acknowledgement
	LagMs       int64 // how long writes wait (see stats)
	LastWriteMs int64 // queen clock of the last acknowledged write
	Failing     bool  // the last write failed and none succeeded since
	LastErr     string
	// AckWaitMs is how long the store has not answered while writes await
	// its answer: since its last answer (an acknowledgement or an error), or
	// since the first of them was sent if it answered nothing since. A store
	// that stops answering (a full disk, a lost stream leader) shows here
	// before any write times out. Kept in constant time, since stats is read
	// often.
	AckWaitMs int64
}

// Write failures are retried with this pause while the store fails, and
// only storeProbe writes are in flight then, so a failing store is probed,
// not flooded.
const (
	failPause  = 100 * time.Millisecond
	storeProbe = 16
)

// writer owns every key's state (what its senders sent, tracker.go; what is
// stored and waiting) under one lock, the coalescing queue and the
// asynchronous KV publishes. put, mark, observe, forget and seen may be
// called concurrently with each other and with the acknowledgement handlers
// (the queen admits a beat with mu held: admitLocked, putLocked); run is one
// goroutine.
type writer struct {
	js      jetstream.JetStream
	cfg     Config
	log     *slog.Logger
	m       writeMetrics
	window  int
	buckets map[subjects.Kind]string // kind → "$KV.<bucket>."

	mu        sync.Mutex
	cond      *sync.Cond
	slots     map[target]*slot              // by kind and key
	byConn    map[string]map[*slot]struct{} // keys by the connection their holder last beat on
	qs        [nQueues]queue
	waiting   int   // keys in the queues
	signals   int   // wakes of run by schedule (a test reads it)
	lazies    int   // of which lazy refreshes
	eager     bool  // other queens share the group: no lazy refreshes
	lazyCutMs int64 // lazy refreshes due by then are written now (lazyBatchMs)
	behindMs  int64 // since when the writer is behind, 0 if not (lapse)
	lapsing   bool  // behind for lapseAfterMs: refreshes past their deadline lapse
	overdueMs int64 // when it last found a refresh past its deadline
	due       *time.Timer
	inflight  map[*nats.Msg]*slot
	stopping  bool
	lastOKMs  int64
	lastErrMs int64
	answerMs  int64 // the store's last answer to a write, or when one was sent with none in flight
	lastErr   error
	sentLagMs int64 // how long the write sent last had waited
	idle      chan struct{}
	errLog    rate.Sometimes
	// mirror returns what the registry mirror holds for key (what: sNone
	// if nothing) and, for a worker, its entry; nil before the mirror
	// exists. Called with mu held.
	mirror func(kind subjects.Kind, key string) (stored, *wire.WorkerEntry)
	// rereads are the keys waiting to be read again (conditional.go).
	// loading holds every write until the registry mirror has loaded
	// (holdUntilLoaded, loaded).
	loading    bool
	rereads    map[*slot]struct{}
	rereadQ    [2][]*slot // goodbyes and marks first, then beats
	rereadWake chan struct{}
	streamMu   sync.Mutex
	streams    map[subjects.Kind]jetstream.Stream
}

func newWriter(log *slog.Logger, m writeMetrics, window int, buckets map[subjects.Kind]string) *writer {
	w := &writer{
		log:      log,
		m:        m,
		window:   window,
		buckets:  buckets,
		slots:    map[target]*slot{},
		byConn:   map[string]map[*slot]struct{}{},
		inflight: map[*nats.Msg]*slot{},
		errLog:   rate.Sometimes{Interval: 5 * time.Second},
		rereads:  map[*slot]struct{}{},
		// One token: the reader goroutine drains every waiting key per wake.
		rereadWake: make(chan struct{}, 1),
	}
	for i := range w.qs {
		w.qs[i].which = i
	}
	w.cond = sync.NewCond(&w.mu)
	// Wakes run when the earliest lazy refresh falls due.
	w.due = time.AfterFunc(time.Hour, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	w.due.Stop()
	return w
}

// loadWait is the longest writes wait at start for the registry mirror to
// load. A restarted queen's entries live a TTL (3 intervals by default) from
// their last write; the mirror of 100k entries loads in well under a second.
const loadWait = time.Second

// holdUntilLoaded makes run wait for loaded before its first write.
func (w *writer) holdUntilLoaded() {
	w.mu.Lock()
	w.loading = true
	w.mu.Unlock()
}

// loaded lets run write.
func (w *writer) loaded() {
	w.mu.Lock()
	w.loading = false
	w.cond.Broadcast()
	w.mu.Unlock()
}

// setMirror sets the lookup of the registry mirror.
func (w *writer) setMirror(f func(kind subjects.Kind, key string) (stored, *wire.WorkerEntry)) {
	w.mu.Lock()
	w.mirror = f
	w.mu.Unlock()
}

// known returns the entry of key this queen wrote as value: the write in
// flight, if its bytes are value's (the watch often delivers a write before
// its acknowledgement comes), or the last write the store acknowledged, if
// it is revision rev. Else nil. The registry mirror shares it
// (registry.Config.Known) rather than decode the put again. A written op's
// entry is never modified (a mark clones it).
func (w *writer) known(kind subjects.Kind, key string, rev uint64, value []byte) any {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slots[target{kind, key}]
	if s == nil {
		return nil
	}
	var o *op
	switch {
	case s.inflight != nil && s.sent != nil && bytes.Equal(s.sent, value):
		o = s.inflight
	case s.last != nil && s.stored.rev == rev && s.stored.is(s.last):
		o = s.last
	default:
		return nil
	}
	switch {
	case o.worker != nil:
		return o.worker
	case o.hive != nil:
		return o.hive
	case o.queen != nil:
		return o.queen
	}
	return nil
}

// subjectOf returns the KV subject of key: "$KV.<bucket>.<key>" (ADR-8).
func (w *writer) subjectOf(kind subjects.Kind, key string) string { return w.buckets[kind] + key }

// put queues o as the newest write of its key, replacing (coalescing) a
// waiting one.
func (w *writer) put(o *op) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.putLocked(o)
}

// putLocked is put with mu held.
func (w *writer) putLocked(o *op) {
	s := o.slot
	if s == nil {
		s = w.slotOf(target{o.kind, o.key})
	}
	// The key as the slot holds it: the beat's is a slice of its subject,
	// which it would keep alive for as long as the op waits or is stored.
	o.key = s.key
	s.goneMs = 0
	var mirrored *wire.WorkerEntry
	if s.inflight == nil && s.last == nil && s.pend == nil && w.mirror != nil {
		// A key this queen has not written (the watch keeps what it knows
		// of the others, observe): another queen's write, or one before a
		// restart. The stored entry expires a TTL after it was accepted,
		// less the second a lazy refresh rounds off, at the earliest.
		st, e := w.mirror(o.kind, o.key)
		if s.stored.learn(st); s.stored.what == sValue {
			s.deadlineMs = max(s.deadlineMs, s.stored.atMs+o.ttlMs-1000)
		}
		if e != nil && s.stored.rev == st.rev {
			mirrored = e
		}
	}
	if s.pend != nil {
		w.m.coalesced(o.kind)
	}
	prev := s.pend
	if prev == nil {
		prev = s.inflight
	}
	if prev == nil {
		prev = s.last
	}
	if prev == nil && mirrored != nil {
		// What the registry shows (a restarted queen): a beat that changes
		// nothing of it needs no write before the entry is due.
		prev = &op{instance: mirrored.InstanceID, worker: mirrored}
	}
	if prev != nil {
		// First, so that notable's comparisons of the shared strings
		// find the same pointer and do not compare the bytes again.
		share(&o.instance, prev.instance)
		share(&o.conn, prev.conn)
		if prev.worker != nil && o.worker != nil {
			shareStrings(&o.worker.Worker, &prev.worker.Worker)
		}
	}
	// A lone queen writes a worker's unchanged beat lazily: the stored
	// entry is refreshed leadMs before it expires, with the newest beat.
	s.urgent = s.urgent && s.pend != nil || notable(prev, o)
	if s.pend == nil {
		s.since = o.acceptedMs
	}
	s.pend = o
	w.schedule(s)
}

// mark queues a disconnected mark for key, whose holder's connection conn
// closed: applied to a waiting beat from conn, else written over the entry
// last seen (from, at revision rev) with its original expiry. Like every
// write it is conditional: if the entry changed since, the stored value is
// read again and the mark dropped unless it still shows that beat.
func (w *writer) mark(kind subjects.Kind, key, conn string, from *op, rev uint64, nowMs int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slotOf(target{kind, key})
	if from != nil {
		s.stored.learn(stored{rev: rev, what: sValue, instance: from.instance, seq: from.seq, atMs: from.acceptedMs})
	}
	switch {
	case s.pend != nil && s.pend.del:
		return // a goodbye is on its way
	case s.pend != nil:
		if s.pend.conn != conn {
			return // a beat from another connection: alive
		}
		s.pend = disconnected(s.pend, nowMs)
	case s.inflight != nil:
		if s.inflight.conn != conn || s.inflight.del {
			return
		}
		s.pend = cloneMark(s.inflight, nowMs)
	case s.last != nil && s.last.conn == conn && s.stored.is(s.last):
		s.pend = cloneMark(s.last, nowMs)
	case from != nil:
		s.pend = cloneMark(from, nowMs)
	default:
		return
	}
	if s.since == 0 {
		s.since = nowMs
	}
	s.urgent = true
	w.schedule(s)
}

// disconnected returns a copy of o whose entry, a copy too, is marked
// disconnected. Entries are never modified in place: one sent may be shared
// with the registry mirror (known).
func disconnected(o *op, nowMs int64) *op {
	c := *o
	switch {
	case o.worker != nil:
		e := *o.worker
		c.worker = &e
	case o.hive != nil:
		e := *o.hive
		c.hive = &e
	case o.queen != nil:
		e := *o.queen
		c.queen = &e
	}
	if r := c.received(); r != nil && r.Liveness != wire.LivenessDisconnected {
		r.Liveness, r.LivenessSinceMs = wire.LivenessDisconnected, nowMs
	}
	return &c
}

// cloneMark returns a mark op carrying a copy of o's entry, marked
// disconnected, that keeps o's expiry.
func cloneMark(o *op, nowMs int64) *op {
	c := disconnected(o, nowMs)
	c.mark, c.attempts = true, 0
	if c.expiresMs == 0 {
		c.expiresMs = o.acceptedMs + o.ttlMs
	}
	return c
}

func newSlot(kind subjects.Kind, key, subject string) *slot {
	s := &slot{kind: kind, key: key, subject: subject}
	for i := range s.idx {
		s.idx[i] = -1
	}
	return s
}

// schedule puts s in the queues its waiting op belongs in, or takes it out
// of them if nothing is waiting or a write is in flight. mu held.
func (w *writer) schedule(s *slot) {
	var in [nQueues]bool
	if o := s.pend; o != nil && s.inflight == nil && !s.rereading {
		if s.since == 0 {
			s.since = o.acceptedMs
		}
		switch {
		case o.del || o.mark:
			in[qFirst] = true
		case s.deadlineMs != 0 && s.lapsedMs == s.deadlineMs:
			in[qNew] = true // lapsed (lapse)
		case !w.eager && s.deadlineMs != 0 && !s.urgent && lazyKind(o):
			in[qLazy] = true
		default:
			in[qLive] = s.deadlineMs != 0
			in[qNew] = s.urgent || s.deadlineMs == 0
		}
	}
	flip(&s.lazy, in[qLazy], &w.lazies)
	if in[qLazy] {
		s.dueAt = dueMs(s)
	}
	queued := false
	for i := range w.qs {
		q := &w.qs[i]
		switch {
		case in[i] && s.idx[i] >= 0:
			heap.Fix(q, s.idx[i])
		case in[i]:
			heap.Push(q, s)
		case s.idx[i] >= 0:
			heap.Remove(q, s.idx[i])
		}
		queued = queued || in[i]
	}
	flip(&s.queued, queued, &w.waiting)
	if queued && (!in[qLazy] || s.idx[qLazy] == 0) {
		// run sleeps until the first lazy refresh falls due: a lazy one
		// wakes it only when it becomes that first one, so a lone queen's
		// unchanged beats cost no wake of run each.
		w.signals++
		w.cond.Signal()
	}
}

// flip sets *flag to v and keeps n, the count of keys whose flag is set,
// in step.
func flip(flag *bool, v bool, n *int) {
	if *flag != v {
		*flag = v
		if v {
			*n++
		} else {
			*n--
		}
	}
}

// run sends queued writes until stop; one goroutine.
func (w *writer) run() {
	for {
		w.mu.Lock()
		var s *slot
		for {
			if w.stopping {
				w.mu.Unlock()
				return
			}
			if w.waiting > 0 && len(w.inflight) < w.limit() && !w.loading {
				nowMs := time.Now().UnixMilli()
				if s = w.next(nowMs); s != nil {
					break
				}
				if lz := &w.qs[qLazy]; lz.Len() > 0 { // only lazy refreshes wait: sleep until the first falls due
					w.due.Reset(time.Duration(dueMs(lz.s[0])-nowMs) * time.Millisecond)
				}
			}
			w.cond.Wait()
		}
		failing := w.failingLocked()
		if w.mirror != nil && s.stored.what == sUnknown {
			st, _ := w.mirror(s.kind, s.key) // the watch tells of later changes (observe, forget)
			s.stored.learn(st)
		}
		if s.stored.what == sUnknown && (s.pend.del || s.pend.mark) {
			// A goodbye or mark acts only on an entry it matches: with
			// nothing known of the key, it is read first.
			w.rereadLocked(s)
			w.mu.Unlock()
			continue
		}
		o := s.pend
		nowMs := time.Now().UnixMilli()
		lazy := s.lazy
		if w.sentLagMs = nowMs - s.since; lazy {
			w.sentLagMs = max(0, nowMs-dueMs(s)) // how late it is, not how long it waited on purpose
		}
		s.pend, s.inflight, s.since = nil, o, 0
		w.schedule(s) // out of the queues while in flight
		msg, ok := w.build(s, o, lazy)
		if ok {
			if len(w.inflight) == 0 {
				w.answerMs = time.Now().UnixMilli() // the wait for an answer starts here
			}
			w.inflight[msg], s.sent = s, msg.Data
		} else {
			s.inflight = nil
			w.finish(s) // a shed write may be the last one a Stop waits for
		}
		w.mu.Unlock()
		if !ok {
			continue
		}
		if _, err := w.js.PublishMsgAsync(msg); err != nil {
			w.failed(msg, err)
		}
		if failing {
			time.Sleep(failPause) // probing a failing store, not flooding it
		}
	}
}

func (w *writer) limit() int {
	if w.failingLocked() {
		return min(w.window, storeProbe)
	}
	return w.window
}

func (w *writer) failingLocked() bool { return w.lastErrMs > w.lastOKMs }

// build returns the message for o, or false if o is dropped: a beat whose
// TTL ran out while it waited (shed: writing it would make a dead sender
// look alive). An entry's TTL runs from its write, but a beat that waited
// longer than one of its sender's intervals loses the excess, so an entry
// never outlives its sender's last beat by more than TTL + one interval
// (the time a queen may hold a live sender's newest beat under overload).
// A lazy refresh waited on purpose: its TTL runs from the beat, rounded down
// to whole seconds, so the entry expires no later than one TTL after the
// sender's last beat. A mark keeps the expiry of the entry it marks. mu held.
func (w *writer) build(s *slot, o *op, lazy bool) (*nats.Msg, bool) {
	now := time.Now()
	h := nats.Header{}
	msg := &nats.Msg{Subject: s.subject, Header: h}
	if o.del {
		h.Set(kvOperation, "DEL")
	} else {
		nowMs := now.UnixMilli()
		var remaining int64
		switch {
		case o.mark:
			remaining = o.expiresMs - nowMs
		case lazy:
			remaining = (o.ttlMs - (nowMs - o.acceptedMs)) / 1000 * 1000
		default:
			remaining = o.ttlMs - max(0, nowMs-o.acceptedMs-o.intervalMs)
		}
		if remaining <= 0 {
			w.m.shed(o.kind, "stale")
			return nil, false
		}
		data, err := o.encode()
		if err != nil { // cannot happen for a validated beat; never crash on it
			w.log.Error("encode registry entry", "key", o.key, "err", err)
			return nil, false
		}
		msg.Data = data
		h.Set(jetstream.MsgTTLHeader, strconv.FormatInt((remaining+999)/1000, 10)+"s")
		o.expiresMs = nowMs + remaining
	}
	if o.del {
		// The goodbye's sender, kept in the DEL marker: a re-read tells a
		// left instance's older beat from a new instance (conditional.go).
		h.Set(HeaderInstance, o.instance)
		h.Set(HeaderSeq, strconv.FormatUint(o.seq, 10))
	}
	// Every write is judged against the newest message of the key this
	// queen knows and conditional on its revision: another writer's change
	// makes it fail, and the key is read again and decided anew.
	if ok, why := s.stored.admits(o); !ok {
		w.m.writeFailed(o.kind, "refused")
		w.log.Debug("registry write refused", "key", o.key, "seq", o.seq, "why", why)
		return nil, false
	}
	h.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(s.stored.rev, 10))
	o.attempts++
	o.sentAt = now
	return msg, true
}

// kvOperation is the header the KV layer reads to tell a delete from a put.
const kvOperation = "KV-Operation"

// complete takes msg's write out of flight and returns its key and op, or
// nil if msg is not in flight (answered twice). It locks mu; the caller
// unlocks it either way.
func (w *writer) complete(msg *nats.Msg) (*slot, *op) {
	w.mu.Lock()
	s := w.inflight[msg]
	if s == nil {
		return nil, nil
	}
	delete(w.inflight, msg)
	w.answerMs = time.Now().UnixMilli()
	o := s.inflight
	s.inflight, s.sent = nil, nil
	return s, o
}

// acked handles a store acknowledgement (nats.go's ack goroutine).
func (w *writer) acked(msg *nats.Msg, pa *jetstream.PubAck) {
	s, o := w.complete(msg)
	if s == nil {
		w.mu.Unlock()
		return
	}
	nowMs := time.Now().UnixMilli()
	w.lastOKMs = max(nowMs, w.lastErrMs+1)
	s.stored.learn(storedOf(o, pa.Sequence))
	if o.del {
		s.last, s.deadlineMs = nil, 0
	} else {
		s.last, s.deadlineMs = o, o.expiresMs
	}
	lat := time.Since(o.sentAt)
	w.finish(s)
	w.mu.Unlock()
	w.m.writeDone(lat)
}

// failed handles a write that got no acknowledgement or an error. A write
// refused because the key changed since this queen last saw it (another
// queen, a mark, a retry of a write that did land) is decided again from the
// stored value (conditional.go). Others are retried unless a newer op of the
// key replaced them or the beat's TTL ran out (then it is counted lost and
// logged).
func (w *writer) failed(msg *nats.Msg, err error) {
	s, o := w.complete(msg)
	if s == nil {
		w.mu.Unlock()
		return
	}
	nowMs := time.Now().UnixMilli()
	var apiErr *jetstream.APIError
	raced := errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
	if !raced {
		w.lastErrMs, w.lastErr = max(nowMs, w.lastOKMs+1), err
	}
	outcome := "retried"
	switch {
	case raced:
		outcome = "reread"
		if s.pend == nil {
			s.pend = o
		} else {
			w.m.coalesced(o.kind)
		}
		s.rereadOver, _ = strconv.ParseUint(msg.Header.Get(jetstream.ExpectedLastSubjSeqHeader), 10, 64)
		w.rereadLocked(s)
		w.watched(s) // the watch may have told of the change already
	case s.pend != nil:
		outcome = "superseded"
	case o.del || !stale(o, nowMs):
		s.pend = o // goodbyes are retried until written
	default:
		outcome = "lost"
	}
	w.finish(s)
	w.mu.Unlock()
	w.m.writeFailed(o.kind, outcome)
	if outcome == "lost" {
		w.log.Error("registry write given up: its TTL ran out while the store failed", "key", o.key, "seq", o.seq,
			"attempts", o.attempts, "err", err)
	} else if !raced {
		w.errLog.Do(func() { w.log.Warn("registry write failed", "key", o.key, "outcome", outcome, "err", err) })
	}
}

// finish requeues s after its write completed and wakes waiters. mu held.
func (w *writer) finish(s *slot) {
	if s.pend == nil && s.last == nil && !s.queued && !s.rereading && s.inflight == nil && s.goneMs == 0 {
		s.goneMs = time.Now().UnixMilli() // a deleted key: kept for what it knows until swept
	}
	w.schedule(s)
	w.cond.Signal()
	w.wakeIdle()
}

// wakeIdle wakes wait once nothing is waiting, in flight or being read
// again. mu held.
func (w *writer) wakeIdle() {
	if len(w.inflight) == 0 && w.nothingDue(time.Now().UnixMilli()) && len(w.rereads) == 0 && w.idle != nil {
		close(w.idle)
		w.idle = nil
	}
}

// forget records that a key left (the goodbye of instance, as far as the
// registry showed it) or expired at revision rev. The tracker keeps its
// claimants, so a replayed goodbye or older beat is still refused, while a
// newer beat of an expired instance (a sender back from a partition) is
// accepted; an instance that left is never heard again. A key with a beat
// still waiting is new again: its write re-creates the entry (over rev) and
// goes with the new entries, not ahead of the refreshes that keep live
// entries alive, so under overload writes are not spent on entries already
// lost while others are about to be.
func (w *writer) forget(tg target, rev uint64, left bool, instance string, nowMs int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slots[tg]
	if s == nil {
		return
	}
	if t := &s.snd; s.tracked {
		if left && instance != "" {
			t.left = strings.Clone(instance)
		}
		if t.goneAtMs == 0 {
			t.goneAtMs = nowMs
			w.setConn(s, "")
		}
	}
	if left {
		s.stored.learn(stored{rev: rev, what: sLeft, instance: instance})
	} else {
		s.stored.learn(stored{rev: rev, what: sGone})
	}
	w.watched(s)
	switch {
	case s.inflight != nil || s.rereading:
	case s.pend == nil:
		s.last, s.deadlineMs = nil, 0
		if s.goneMs == 0 {
			s.goneMs = nowMs
		}
	default:
		s.last, s.deadlineMs = nil, 0
		w.schedule(s)
	}
}

// sweep drops the keys gone before cutoffMs with nothing to write, so
// departed senders do not pile up; it returns how many.
func (w *writer) sweep(cutoffMs int64) (dropped int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, s := range w.slots {
		idle := s.pend == nil && s.inflight == nil && !s.rereading && !s.queued && s.last == nil
		if idle && s.goneMs < cutoffMs && (!s.tracked || s.snd.goneAtMs != 0 && s.snd.goneAtMs < cutoffMs) {
			w.setConn(s, "")
			delete(w.slots, k)
			dropped++
		}
	}
	return dropped
}

// stats returns a snapshot, in constant time: the write lag is how long
// the write sent last had waited (refreshes go in expiry order, so under
// overload that is about the longest wait), or the oldest goodbye or new
// entry waiting, whichever is longer.
func (w *writer) stats() writerStats {
	now := time.Now().UnixMilli()
	w.mu.Lock()
	defer w.mu.Unlock()
	st := writerStats{Backlog: w.waiting, InFlight: len(w.inflight), LastWriteMs: w.lastOKMs,
		Failing: w.failingLocked()}
	st.Backlog, st.Refreshes = w.waiting-w.lazies, w.lazies
	if w.waiting > 0 {
		st.LagMs = w.sentLagMs
	}
	if lz := &w.qs[qLazy]; lz.Len() > 0 {
		st.LagMs = max(st.LagMs, now-dueMs(lz.s[0])) // a refresh overdue
	}
	for _, q := range []*queue{&w.qs[qFirst], &w.qs[qNew]} {
		if q.Len() > 0 {
			st.LagMs = max(st.LagMs, now-q.s[0].since)
		}
	}
	if len(w.inflight) > 0 {
		st.AckWaitMs = max(0, now-w.answerMs)
	}
	if w.lastErr != nil && st.Failing {
		st.LastErr = w.lastErr.Error()
	}
	return st
}

// wait returns true once nothing is due or in flight (lazy refreshes not
// yet due aside), false if ctx ends first.
func (w *writer) wait(ctx context.Context) bool {
	w.mu.Lock()
	if len(w.inflight) == 0 && w.nothingDue(time.Now().UnixMilli()) && len(w.rereads) == 0 {
		w.mu.Unlock()
		return true
	}
	if w.idle == nil {
		w.idle = make(chan struct{})
	}
	idle := w.idle
	w.mu.Unlock()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// stop ends run.
func (w *writer) stop() {
	w.mu.Lock()
	w.stopping = true
	w.due.Stop()
	w.cond.Broadcast()
	w.mu.Unlock()
}
