package queen

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// reserve keeps a frozen queen from taking live entries with it. The queue
// group hands each beat to one queen, and the server goes on handing a
// frozen (stopped, swapping, partitioned) queen its share until it drops
// that queen's connection, seconds later: longer than a TTL of a few beats.
// So while other queens are in the group, every queen also receives every
// beat on a plain subscription and holds the newest of each key for a
// moment. A held beat that no queen took by then (its seq is not in this
// queen's tracker, which learns from this queen's own share and from every
// write in the registry) was swallowed by a queen that is not working, and
// this queen takes it. A frozen queen's share is then written with at most
// half an interval of delay. With one queen there is no reserve; a queen
// whose entry expired without a goodbye still counts for Config.PeerLinger
// (linger), since the broker goes on handing it its share until it drops
// its connection.
type reserve struct {
	on atomic.Bool
	// awakeMs is when housekeeping last ran; discardUntilMs is the end of
	// the discard after a stall of this queen (SIGSTOP, a frozen VM). Both
	// on the monotonic clock (mono), so a step of the wall clock is no stall.
	awakeMs        atomic.Int64
	discardUntilMs atomic.Int64

	mu   sync.Mutex
	sub  *nats.Subscription
	held map[string]heldBeat // by subject

	lingerMu  sync.Mutex
	lingering map[string]lingerer // by another queen's ID
	closed    map[string]string   // another queen's ID → its connection the broker closed
}

// lingerer is another queen whose entry expired without a goodbye: it
// counts as a peer until then, or until the broker closes conn.
type lingerer struct {
	until time.Time
	conn  string
}

type heldBeat struct {
	msg   *nats.Msg
	atMs  int64
	id    *wire.Ident // read when the beat is first looked at
	dueMs int64       // when the hold runs out
	// rescued: the hold ran out and this queen takes the beat from its
	// reserve. It is kept until rescuedKeepMs, so that its copy from this
	// queen's own share, when that share is behind (an overloaded queen),
	// is known as taken, not admitted again and refused as a replay.
	rescued bool
}

// rescuedKeepMs is how long a rescued beat is kept for its copy from this
// queen's share.
const rescuedKeepMs = 10_000

// Hold times: half the sender's interval, within these bounds.
const (
	holdMinMs = 250
	holdMaxMs = 1000
)

// follow turns the reserve on while there are peers, off without.
func (r *reserve) follow(q *Queen, peers int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case peers > 0 && r.sub == nil:
		sub, err := q.nc.Subscribe(q.scheme.All(), r.hold)
		if err == nil {
			err = sub.SetPendingLimits(q.cfg.PendingMsgs, q.cfg.PendingBytes)
		}
		if err != nil {
			q.log.Warn("cannot hold beats in reserve for the other queens", "err", err)
			if sub != nil {
				_ = sub.Unsubscribe()
			}
			return
		}
		r.sub, r.held = sub, map[string]heldBeat{}
		r.on.Store(true)
		q.log.Info("holding beats in reserve: other queens share the group", "peers", peers)
		r.awakeMs.Store(mono())
	case peers == 0 && r.sub != nil:
		_ = r.sub.Unsubscribe()
		r.sub, r.held = nil, nil
		r.on.Store(false)
		q.log.Info("reserve off: no other queen in the group")
	}
}

// stallGapMs is how long housekeeping (every stateCheck) may be silent
// before the queen takes itself for stopped.
const stallGapMs = 1000

// tick records that housekeeping runs; after a stall, beats this queen
// receives from its share are discarded for holdMaxMs: they waited in its
// socket while the other queens took them from their reserves.
func (r *reserve) tick(q *Queen, now time.Time) {
	nowMs := mono()
	prev := r.awakeMs.Swap(nowMs)
	gap := time.Duration(nowMs-prev) * time.Millisecond
	switch {
	case prev == 0 || gap <= stallGapMs*time.Millisecond:
	case r.on.Load():
		r.discardUntilMs.Store(nowMs + holdMaxMs)
		q.log.Warn("this queen was stopped: it discards the beats it received meanwhile, which the other queens took",
			"stalled", gap)
	case gap >= stoppedDisrupts:
		// Alone, a queen stopped this long let every entry with a shorter
		// TTL expire, whether or not its registry watch saw the expiries.
		q.health.stopped(q.log, now, gap)
	}
}

// epoch anchors mono.
var epoch = time.Now()

// mono returns milliseconds on the monotonic clock.
func mono() int64 { return time.Since(epoch).Milliseconds() }

// stoppedDisrupts is how long a queen without peers may be stopped before
// it reports the registry disrupted: the TTL of a sender beating every
// second with the default --missed.
const stoppedDisrupts = 3 * time.Second

// stalled reports whether a beat of this queen's share that arrives now
// must be discarded: this queen was stopped just now, or is still.
func (r *reserve) stalled() bool {
	if !r.on.Load() {
		return false
	}
	now := mono()
	return now-r.awakeMs.Load() > stallGapMs || now < r.discardUntilMs.Load()
}

// dropped returns how many beats the reserve's subscription dropped.
func (r *reserve) dropped() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sub == nil {
		return 0
	}
	d, _ := r.sub.Dropped()
	return d
}

// hold keeps msg as the newest beat of its subject (the reserve's
// subscription goroutine).
func (r *reserve) hold(msg *nats.Msg) {
	now := time.Now().UnixMilli()
	r.mu.Lock()
	if r.held != nil {
		r.held[msg.Subject] = heldBeat{msg: msg, atMs: now}
	}
	r.mu.Unlock()
}

// took lets go of the held copy of a beat this queen took from its share.
// It returns true if this queen already took that beat from its reserve:
// its share was behind by more than the hold.
func (r *reserve) took(msg *nats.Msg) bool {
	if !r.on.Load() {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.held[msg.Subject]
	if ok && bytes.Equal(h.msg.Data, msg.Data) {
		delete(r.held, msg.Subject)
		return h.rescued
	}
	return false
}

// rescue takes the held beats whose hold ran out and that no queen took.
func (r *reserve) rescue(q *Queen, now time.Time) {
	if !r.on.Load() {
		return
	}
	nowMs := now.UnixMilli()
	self := q.scheme.Queen(q.cfg.QueenID)
	var due []heldBeat
	r.mu.Lock()
	for subject, h := range r.held {
		if h.rescued {
			if nowMs-h.atMs >= rescuedKeepMs {
				delete(r.held, subject)
			}
			continue
		}
		if nowMs-h.atMs < holdMinMs {
			continue
		}
		if h.id == nil {
			id, err := wire.DecodeIdent(h.msg.Data)
			if err != nil || subject == self {
				delete(r.held, subject) // refused (and counted) by the queen it went to; or our own beat
				continue
			}
			h.id, h.dueMs = id, h.atMs+min(max(id.IntervalMs/2, holdMinMs), holdMaxMs)
			r.held[subject] = h
		}
		if nowMs >= h.dueMs {
			// Taken from here on: a copy from this queen's share that comes
			// now is not admitted again (took).
			h.rescued = true
			r.held[subject] = h
			due = append(due, h)
		}
	}
	r.mu.Unlock()
	var taken []*nats.Msg // by another queen: let go in one pass below
	for _, h := range due {
		msg := h.msg
		a, err := q.scheme.Parse(msg.Subject)
		if err != nil || q.w.seen(target{a.Kind, keyOf(msg.Subject, a)}, h.id.InstanceID, h.id.Seq,
			msg.Header.Get(wire.HeaderEvent) == wire.EventGoodbye) {
			taken = append(taken, msg)
			continue
		}
		q.metrics.rescued.WithLabelValues(string(a.Kind)).Inc()
		// Accepted as when it arrived; conditional like every write: if
		// another queen wrote the key since this queen last saw it, the
		// newer entry, or its goodbye, stays.
		q.decode(msg, h.atMs)
	}
	if len(taken) > 0 {
		r.mu.Lock()
		for _, msg := range taken {
			if k, ok := r.held[msg.Subject]; ok && k.msg == msg { // not replaced by a newer beat meanwhile
				delete(r.held, msg.Subject)
			}
		}
		r.mu.Unlock()
	}
}

// keyOf returns the registry key of a beat's address a, parsed from
// subject: the subject's tail (<hive_id>.<worker_id>, <hive_id> or
// <queen_id>), so no key is built per beat.
func keyOf(subject string, a subjects.Address) string {
	n := len(a.QueenID)
	switch a.Kind {
	case subjects.KindWorker:
		n = len(a.HiveID) + 1 + len(a.WorkerID)
	case subjects.KindHive:
		n = len(a.HiveID)
	}
	return subject[len(subject)-n:]
}

// linger learns from a registry event of another queen's entry. An entry
// that expired while its queen's connection was open (no DISCONNECT
// advisory, no disconnected mark) may be a queen that is stopped or cut off,
// which the broker still hands its share: it counts as a peer for
// Config.PeerLinger, or until the broker closes that connection
// (peerClosed). Any other event of the key (a beat, a goodbye, a mark) ends
// that.
func (r *reserve) linger(q *Queen, ev registry.Event, now time.Time) {
	r.lingerMu.Lock()
	defer r.lingerMu.Unlock()
	delete(r.lingering, ev.Key)
	var conn string
	if ev.Queen != nil {
		conn = ev.Queen.Conn
	}
	closed := r.closed[ev.Key]
	delete(r.closed, ev.Key)
	if ev.Type != registry.Expired || q.cfg.PeerLinger <= 0 || closed != "" && closed == conn ||
		ev.Queen != nil && ev.Queen.Liveness == wire.LivenessDisconnected {
		return
	}
	if r.lingering == nil {
		r.lingering = map[string]lingerer{}
	}
	r.lingering[ev.Key] = lingerer{until: now.Add(q.cfg.PeerLinger), conn: conn}
	q.log.Warn("another queen's entry expired without a goodbye: the broker may still hand it beats, so this queen holds every beat in reserve for it",
		"peer", ev.Key, "for", q.cfg.PeerLinger)
}

// peerClosed learns that the broker closed conn (a DISCONNECT advisory):
// another queen on it is handed no more beats, so its linger ends, or does
// not start when its entry expires.
func (r *reserve) peerClosed(q *Queen, conn string) {
	var ids []string
	if w := q.Registry(); w != nil {
		for _, e := range w.Queens() {
			if e.Conn == conn && e.QueenID != q.cfg.QueenID {
				ids = append(ids, e.QueenID)
			}
		}
	}
	r.lingerMu.Lock()
	defer r.lingerMu.Unlock()
	for _, id := range ids {
		if r.closed == nil {
			r.closed = map[string]string{}
		}
		r.closed[id] = conn
	}
	for id, l := range r.lingering {
		if l.conn == conn {
			delete(r.lingering, id)
			q.log.Info("the broker closed an expired queen's connection: it is handed no more beats", "peer", id)
		}
	}
}

// peers returns how many other queens the registry shows (live), and how
// many more count while their expired entries linger.
func (q *Queen) peers(now time.Time) (live, lingering int) {
	if w := q.Registry(); w != nil {
		for _, e := range w.Queens() {
			if e.QueenID != q.cfg.QueenID {
				live++
			}
		}
	}
	return live, q.reserve.lingerers(q, now)
}

// lingerers returns how many other queens linger at now, letting go of
// those whose linger ended.
func (r *reserve) lingerers(q *Queen, now time.Time) int {
	r.lingerMu.Lock()
	defer r.lingerMu.Unlock()
	n := 0
	for id, l := range r.lingering {
		if now.Before(l.until) {
			n++
		} else {
			delete(r.lingering, id)
			q.log.Info("an expired queen's linger ended", "peer", id)
		}
	}
	return n
}

// mirrored returns what this queen's registry mirror holds for key: its
// entry's revision and ident (sNone: nothing) and, for a worker, the entry.
func (q *Queen) mirrored(kind subjects.Kind, key string) (stored, *wire.WorkerEntry) {
	w := q.Registry()
	if w == nil {
		return stored{}, nil
	}
	switch kind {
	case subjects.KindWorker:
		if e, rev, ok := w.Worker(key); ok {
			return stored{rev: rev, what: sValue, instance: e.InstanceID, seq: e.Seq, atMs: e.ReceivedAtMs}, e
		}
	case subjects.KindHive:
		if e, rev, ok := w.Hive(key); ok {
			return stored{rev: rev, what: sValue, instance: e.InstanceID, seq: e.Seq, atMs: e.ReceivedAtMs}, nil
		}
	}
	// A queen's own key (its acknowledgements say), or not in the mirror:
	// unknown (it may not be loaded yet).
	return stored{}, nil
}
