package queen

import (
	"strings"

	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// The tracker decides whether a beat is fresh: per key, the claimants and
// liveness state it learns from accepted beats and from the registry watch
// (what every queen wrote), so a restarted queen and a queue group of queens
// agree. Its state is the key's slot's (slot.snd), under the writer's lock:
// a key has one state, looked up once per beat.

// target names a registry entry: its kind and key.
type target struct {
	kind subjects.Kind
	key  string
}

// claim is one instance's standing under a key: the last seq accepted from
// it and when (queen clock).
type claim struct {
	instance string
	seq      uint64
	lastMs   int64
}

// sender is what the queen remembers of a key's senders.
type sender struct {
	holder      claim // the instance whose beats the entry shows
	intervalMs  int64 // the holder's interval
	firstSeenMs int64 // queen clock at the holder's first accepted beat
	// ousted holds earlier or competing claimants, newest first: their
	// replays are refused, and one that keeps beating regains the key once
	// the holder falls silent.
	ousted   [2]claim
	goneAtMs int64 // queen clock when the entry left or expired; 0 while live
	// left is the instance that said goodbye for the key, last: it never
	// beats again, so any later beat of it is a replay or a late copy (a
	// queen's reserve, a retry) and is refused.
	left       string
	conflictMs int64 // last time two instances beat within one TTL; 0 never
	conn       string

	progress        uint64
	hasProgress     bool
	progressAtMs    int64
	liveness        wire.Liveness
	livenessSinceMs int64
}

// verdict is the tracker's decision on one beat.
type verdict struct {
	ok       bool
	reason   string // why not ok: "replay", "conflict", "seq" or "superseded"
	detail   string
	conflict bool // two instances are beating under the key
	rec      wire.Received
	// slot is the key's, for the write of an accepted beat (put): sweep
	// keeps a key whose beat was just accepted, so it stays the key's.
	slot *slot
}

// Seq sanity: a sender's seq grows by one per beat plus one per triggered
// beat (at most one per publisher MinGap, 100 ms by default). A jump beyond
// this allowance is refused, so one forged beat with a huge seq cannot make
// every later genuine beat look like a replay.
const (
	seqSlack     = 1024
	seqPerMsRate = 50 // at most one beat per 50 ms on average
)

func maxJump(elapsedMs int64) uint64 {
	if elapsedMs < 0 {
		elapsedMs = 0
	}
	return seqSlack + uint64(elapsedMs/seqPerMsRate)
}

// slotOf returns tg's slot, created if absent. mu held.
func (w *writer) slotOf(tg target) *slot {
	s := w.slots[tg]
	if s == nil {
		s = newSlot(tg.kind, strings.Clone(tg.key), w.subjectOf(tg.kind, tg.key))
		w.slots[target{s.kind, s.key}] = s
	}
	return s
}

// admitLocked decides whether a beat of tg is fresh and, if it is, records
// it; busy and progress describe a worker beat (progress nil: none sent). It
// returns the queen-owned keys to store with the beat. mu held.
func (w *writer) admitLocked(tg target, m *wire.Meta, goodbye bool, busy bool, progress *uint64, nowMs int64) verdict {
	s := w.slots[tg]
	if s == nil || !s.tracked {
		if goodbye {
			// A goodbye for a key the queen never saw: let it delete (a
			// restarted queen may not have loaded the key yet).
			return verdict{ok: true}
		}
		s = w.slotOf(tg)
		s.tracked = true
		s.snd = sender{holder: claim{strings.Clone(m.InstanceID), m.Seq, nowMs}, intervalMs: m.IntervalMs, firstSeenMs: nowMs}
		w.setConn(s, m.Conn)
		return w.stamp(s, m, busy, progress, nowMs, verdict{ok: true, slot: s})
	}
	t := &s.snd
	ttl := w.cfg.ttlMs(max(t.intervalMs, m.IntervalMs))
	if t.left != "" && m.InstanceID == t.left {
		return verdict{reason: "replay", detail: "the instance said goodbye already"}
	}
	switch {
	case m.InstanceID == t.holder.instance:
		elapsed := nowMs - t.holder.lastMs
		switch {
		case m.Seq <= t.holder.seq && elapsed < 0:
			// It arrived before the newest beat accepted, and was decoded
			// after it (it waited in the reserve): replaced, not replayed.
			return verdict{reason: "superseded", detail: "a newer beat of the instance was accepted after it arrived"}
		case m.Seq <= t.holder.seq && elapsed <= ttl:
			return verdict{reason: "replay", detail: "seq is not newer than the last accepted"}
		case m.Seq > t.holder.seq && m.Seq-t.holder.seq > maxJump(elapsed):
			return verdict{reason: "seq", detail: "seq jumps further than the sender can have beaten"}
		}
		// seq ≤ last after a whole TTL of silence (or after the entry left):
		// whatever raised it is stale, so the sender is heard again.
		t.holder.seq, t.holder.lastMs = m.Seq, nowMs
		if t.goneAtMs != 0 && !goodbye { // back after leaving or expiring: a new stay
			t.goneAtMs, t.firstSeenMs = 0, nowMs
		}
	default:
		i := t.ousterIndex(m.InstanceID)
		live := t.goneAtMs == 0 && nowMs-t.holder.lastMs <= ttl
		if goodbye && live {
			// Only the instance the entry shows may say goodbye for it.
			return verdict{reason: "conflict", detail: "goodbye from an instance that is not the registered one"}
		}
		if i >= 0 {
			c := &t.ousted[i]
			if m.Seq <= c.seq {
				return verdict{reason: "replay", detail: "seq is not newer than the last accepted from this instance"}
			}
			c.seq, c.lastMs = m.Seq, nowMs
			// The holder has had 1.5 of the challenger's own intervals to
			// beat: the challenger cannot be kept out longer by a holder that
			// forged an interval or fell silent.
			silent := t.goneAtMs != 0 || 2*(nowMs-t.holder.lastMs) > 3*m.IntervalMs
			if !silent {
				t.conflictMs = nowMs
				return verdict{reason: "conflict", detail: "another instance holds the key and is beating", conflict: true}
			}
			if live {
				t.conflictMs = nowMs
			}
			t.holder, t.ousted[i] = *c, t.holder
		} else {
			// A new instance: a restart, or (while the first still beats) a
			// second process under one ID. The newest wins now; the other
			// regains the key if it keeps beating while this one is silent.
			t.ousted[1], t.ousted[0] = t.ousted[0], t.holder
			t.holder = claim{strings.Clone(m.InstanceID), m.Seq, nowMs}
		}
		t.firstSeenMs, t.goneAtMs = nowMs, 0
		t.hasProgress = false
	}
	t.intervalMs = m.IntervalMs
	if goodbye {
		// Gone at once, so a close of its connection after the goodbye marks nothing.
		t.goneAtMs, t.left = nowMs, t.holder.instance
		w.setConn(s, "")
		return verdict{ok: true, slot: s}
	}
	w.setConn(s, m.Conn)
	return w.stamp(s, m, busy, progress, nowMs, verdict{ok: true, slot: s})
}

func (t *sender) ousterIndex(instance string) int {
	for i := range t.ousted {
		if t.ousted[i].instance != "" && t.ousted[i].instance == instance {
			return i
		}
	}
	return -1
}

// stamp fills the queen-owned keys for an accepted beat: first seen,
// progress and stall, conflict. mu held.
func (w *writer) stamp(s *slot, m *wire.Meta, busy bool, progress *uint64, nowMs int64, v verdict) verdict {
	t := &s.snd
	ttl := w.cfg.ttlMs(t.intervalMs)
	v.conflict = t.conflictMs != 0 && nowMs-t.conflictMs <= ttl
	live := wire.LivenessAlive
	if progress != nil {
		if !t.hasProgress || *progress > t.progress || !busy {
			t.progressAtMs = nowMs
		}
		t.progress, t.hasProgress = *progress, true
		if busy && nowMs-t.progressAtMs >= int64(w.cfg.StallAfter)*t.intervalMs {
			live = wire.LivenessStalled
		}
	} else {
		t.hasProgress, t.progressAtMs = false, 0
	}
	if live != t.liveness.OrAlive() || t.livenessSinceMs == 0 {
		t.livenessSinceMs = nowMs
	}
	t.liveness = live
	v.rec = wire.Received{
		ReceivedAtMs:    nowMs,
		FirstSeenMs:     t.firstSeenMs,
		SkewMs:          wire.SkewMs(nowMs, m.SentAtMs),
		LivenessSinceMs: t.livenessSinceMs,
		Conflict:        v.conflict,
	}
	if live != wire.LivenessAlive {
		v.rec.Liveness = live
	}
	if t.hasProgress {
		v.rec.ProgressAtMs = t.progressAtMs
	}
	return v
}

// setConn records the connection the holder beat on. mu held.
func (w *writer) setConn(s *slot, conn string) {
	t := &s.snd
	if t.conn == conn {
		return
	}
	if keys := w.byConn[t.conn]; keys != nil {
		delete(keys, s)
		if len(keys) == 0 {
			delete(w.byConn, t.conn)
		}
	}
	t.conn = strings.Clone(conn)
	if conn == "" {
		return
	}
	keys := w.byConn[t.conn]
	if keys == nil {
		keys = map[*slot]struct{}{}
		w.byConn[t.conn] = keys
	}
	keys[s] = struct{}{}
}

// closed returns the live entries whose holder last beat on conn, and marks
// them disconnected; the caller writes the mark.
func (w *writer) closed(conn string, nowMs int64) []target {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []target
	for s := range w.byConn[conn] {
		t := &s.snd
		if t.goneAtMs != 0 || t.conn != conn {
			continue
		}
		if t.liveness != wire.LivenessDisconnected {
			t.liveness, t.livenessSinceMs = wire.LivenessDisconnected, nowMs
		}
		out = append(out, target{s.kind, s.key})
	}
	return out
}

// observe records a value seen in the registry at revision rev (written by
// this queen or another). rec carries the queen-owned keys stored with it.
// The writer learns the stored message from it too: the write that follows
// expects its revision, and a value another queen wrote expires a TTL after
// it was accepted, less the second a lazy refresh rounds off, at the
// earliest.
func (w *writer) observe(tg target, rev uint64, m *wire.Meta, rec *wire.Received, progress *uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slotOf(tg)
	if s.stored.learn(stored{rev: rev, what: sValue, instance: m.InstanceID, seq: m.Seq, atMs: rec.ReceivedAtMs}); s.stored.rev == rev && s.inflight == nil {
		if d := rec.ReceivedAtMs + w.cfg.ttlMs(m.IntervalMs) - 1000; d > s.deadlineMs {
			s.deadlineMs = d
			if s.queued {
				w.schedule(s)
			}
		}
		w.watched(s)
	}
	t := &s.snd
	switch {
	case !s.tracked:
		s.tracked = true
		*t = sender{holder: claim{m.InstanceID, m.Seq, rec.ReceivedAtMs}, intervalMs: m.IntervalMs, firstSeenMs: rec.FirstSeenMs}
	case t.holder.instance == m.InstanceID:
		if rec.FirstSeenMs != 0 && rec.FirstSeenMs < t.firstSeenMs {
			t.firstSeenMs = rec.FirstSeenMs // learnt from a value written before this queen started
		}
		if m.Seq < t.holder.seq {
			return
		}
		t.holder.seq = m.Seq
		t.holder.lastMs = max(t.holder.lastMs, rec.ReceivedAtMs)
		t.goneAtMs = 0
	default:
		if i := t.ousterIndex(m.InstanceID); i >= 0 {
			if rec.ReceivedAtMs < t.holder.lastMs {
				return // an older instance's value landing late; keep the newer holder
			}
			c := t.ousted[i]
			t.ousted[i] = t.holder
			t.holder = claim{c.instance, max(c.seq, m.Seq), rec.ReceivedAtMs}
		} else {
			t.ousted[1], t.ousted[0] = t.ousted[0], t.holder
			t.holder = claim{m.InstanceID, m.Seq, rec.ReceivedAtMs}
		}
		t.firstSeenMs, t.goneAtMs = rec.FirstSeenMs, 0
	}
	t.intervalMs = m.IntervalMs
	if rec.Conflict {
		t.conflictMs = max(t.conflictMs, rec.ReceivedAtMs)
	}
	if progress != nil {
		t.progress, t.hasProgress = *progress, true
		t.progressAtMs = max(t.progressAtMs, rec.ProgressAtMs)
	}
	t.liveness, t.livenessSinceMs = rec.Liveness.OrAlive(), rec.LivenessSinceMs
	w.setConn(s, m.Conn)
}

// seen reports whether the tracker has accepted or observed seq (or a later
// one) of instance under tg, or, for a goodbye, that the entry is gone, or
// that instance said goodbye: some queen took that beat.
func (w *writer) seen(tg target, instance string, seq uint64, goodbye bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slots[tg]
	if s == nil || !s.tracked {
		return false
	}
	t := &s.snd
	if goodbye && t.goneAtMs != 0 || t.left != "" && t.left == instance {
		return true
	}
	if t.holder.instance == instance {
		return t.holder.seq >= seq
	}
	i := t.ousterIndex(instance)
	return i >= 0 && t.ousted[i].seq >= seq
}
