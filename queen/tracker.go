package queen

import (
	"strings"
	"sync"

	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

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

// sender is what the queen remembers of one registry key.
type sender struct {
	kind        subjects.Kind
	key         string
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
	takeover bool // an ousted instance regained the key
	newInst  bool // a new instance took the key (a restart)
	conflict bool // two instances are beating under the key
	rec      wire.Received
}

// tracker holds, per registry key, the claimants and liveness state that
// decide whether a beat is fresh. It keeps its own copies of keys and
// instance IDs: those share memory with the beat's other strings. It is fed
// by accepted beats and by the registry watcher (what every queen wrote), so
// a restarted queen and a queue group of queens agree. Its methods may be
// called concurrently.
type tracker struct {
	cfg Config
	mu  sync.Mutex
	m   map[string]*sender
	// byConn indexes keys by the connection their holder last beat on.
	byConn map[string]map[string]struct{}
}

func newTracker(cfg Config) *tracker {
	return &tracker{cfg: cfg, m: map[string]*sender{}, byConn: map[string]map[string]struct{}{}}
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

// admit decides whether a beat is fresh and, if it is, records it. id is
// the entry's KV subject (unique across buckets); busy and progress describe
// a worker beat (progress nil: none sent). It returns the queen-owned keys to
// store with the beat.
func (t *tracker) admit(id string, tg target, m *wire.Meta, goodbye bool, busy bool, progress *uint64, nowMs int64) verdict {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := id
	s := t.m[key]
	if s == nil {
		if goodbye {
			// A goodbye for a key the queen never saw: let it delete (a
			// restarted queen may not have loaded the key yet).
			return verdict{ok: true}
		}
		s = &sender{kind: tg.kind, key: strings.Clone(tg.key), holder: claim{strings.Clone(m.InstanceID), m.Seq, nowMs},
			intervalMs: m.IntervalMs, firstSeenMs: nowMs}
		t.m[strings.Clone(key)] = s
		t.setConn(key, s, m.Conn)
		return t.stamp(s, m, busy, progress, nowMs, verdict{ok: true, newInst: true})
	}
	ttl := t.cfg.ttlMs(max(s.intervalMs, m.IntervalMs))
	var v verdict
	if s.left != "" && m.InstanceID == s.left {
		return verdict{reason: "replay", detail: "the instance said goodbye already"}
	}
	switch {
	case m.InstanceID == s.holder.instance:
		elapsed := nowMs - s.holder.lastMs
		switch {
		case m.Seq <= s.holder.seq && elapsed < 0:
			// It arrived before the newest beat accepted, and was decoded
			// after it (it waited parked): replaced, not replayed.
			return verdict{reason: "superseded", detail: "a newer beat of the instance was accepted after it arrived"}
		case m.Seq <= s.holder.seq && elapsed <= ttl:
			return verdict{reason: "replay", detail: "seq is not newer than the last accepted"}
		case m.Seq > s.holder.seq && m.Seq-s.holder.seq > maxJump(elapsed):
			return verdict{reason: "seq", detail: "seq jumps further than the sender can have beaten"}
		}
		// seq ≤ last after a whole TTL of silence (or after the entry left):
		// whatever raised it is stale, so the sender is heard again.
		s.holder.seq, s.holder.lastMs = m.Seq, nowMs
		if s.goneAtMs != 0 && !goodbye { // back after leaving or expiring: a new stay
			s.goneAtMs, s.firstSeenMs = 0, nowMs
		}
		v.ok = true
	default:
		i := s.ousterIndex(m.InstanceID)
		live := s.goneAtMs == 0 && nowMs-s.holder.lastMs <= ttl
		if goodbye && live {
			// Only the instance the entry shows may say goodbye for it.
			return verdict{reason: "conflict", detail: "goodbye from an instance that is not the registered one"}
		}
		if i >= 0 {
			c := &s.ousted[i]
			if m.Seq <= c.seq {
				return verdict{reason: "replay", detail: "seq is not newer than the last accepted from this instance"}
			}
			c.seq, c.lastMs = m.Seq, nowMs
			// The holder has had 1.5 of the challenger's own intervals to
			// beat: the challenger cannot be kept out longer by a holder that
			// forged an interval or fell silent.
			silent := s.goneAtMs != 0 || 2*(nowMs-s.holder.lastMs) > 3*m.IntervalMs
			if !silent {
				s.conflictMs = nowMs
				return verdict{reason: "conflict", detail: "another instance holds the key and is beating", conflict: true}
			}
			if live {
				s.conflictMs = nowMs
			}
			old := s.holder
			s.holder = *c
			s.ousted[i] = old
			v.takeover = true
		} else {
			// A new instance: a restart, or (while the first still beats) a
			// second process under one ID. The newest wins now; the other
			// regains the key if it keeps beating while this one is silent.
			s.ousted[1] = s.ousted[0]
			s.ousted[0] = s.holder
			s.holder = claim{strings.Clone(m.InstanceID), m.Seq, nowMs}
			v.newInst = true
		}
		s.firstSeenMs, s.goneAtMs = nowMs, 0
		s.hasProgress = false
		v.ok = true
	}
	s.intervalMs = m.IntervalMs
	if goodbye {
		// Gone at once, so a close of its connection after the goodbye marks nothing.
		s.goneAtMs, s.left = nowMs, s.holder.instance
		t.setConn(key, s, "")
		return v
	}
	t.setConn(key, s, m.Conn)
	return t.stamp(s, m, busy, progress, nowMs, v)
}

func (s *sender) ousterIndex(instance string) int {
	for i := range s.ousted {
		if s.ousted[i].instance != "" && s.ousted[i].instance == instance {
			return i
		}
	}
	return -1
}

// stamp fills the queen-owned keys for an accepted beat: first seen,
// progress and stall, conflict. Called with mu held.
func (t *tracker) stamp(s *sender, m *wire.Meta, busy bool, progress *uint64, nowMs int64, v verdict) verdict {
	ttl := t.cfg.ttlMs(s.intervalMs)
	v.conflict = s.conflictMs != 0 && nowMs-s.conflictMs <= ttl
	live := wire.LivenessAlive
	if progress != nil {
		if !s.hasProgress || *progress > s.progress || !busy {
			s.progressAtMs = nowMs
		}
		s.progress, s.hasProgress = *progress, true
		if busy && nowMs-s.progressAtMs >= int64(t.cfg.StallAfter)*s.intervalMs {
			live = wire.LivenessStalled
		}
	} else {
		s.hasProgress, s.progressAtMs = false, 0
	}
	if live != s.liveness.OrAlive() || s.livenessSinceMs == 0 {
		s.livenessSinceMs = nowMs
	}
	s.liveness = live
	v.rec = wire.Received{
		ReceivedAtMs:    nowMs,
		FirstSeenMs:     s.firstSeenMs,
		SkewMs:          wire.SkewMs(nowMs, m.SentAtMs),
		LivenessSinceMs: s.livenessSinceMs,
		Conflict:        v.conflict,
	}
	if live != wire.LivenessAlive {
		v.rec.Liveness = live
	}
	if s.hasProgress {
		v.rec.ProgressAtMs = s.progressAtMs
	}
	return v
}

// setConn records the connection the holder beat on. Called with mu held.
func (t *tracker) setConn(key string, s *sender, conn string) {
	if s.conn == conn {
		return
	}
	if s.conn != "" {
		if keys := t.byConn[s.conn]; keys != nil {
			delete(keys, key)
			if len(keys) == 0 {
				delete(t.byConn, s.conn)
			}
		}
	}
	s.conn = strings.Clone(conn)
	if conn == "" {
		return
	}
	keys := t.byConn[s.conn]
	if keys == nil {
		keys = map[string]struct{}{}
		t.byConn[s.conn] = keys
	}
	if _, ok := keys[key]; !ok {
		keys[strings.Clone(key)] = struct{}{}
	}
}

// closed returns the live entries whose holder last beat on conn, and marks
// them disconnected; the caller writes the mark.
func (t *tracker) closed(conn string, nowMs int64) []target {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []target
	for key := range t.byConn[conn] {
		s := t.m[key]
		if s == nil || s.goneAtMs != 0 || s.conn != conn {
			continue
		}
		if s.liveness != wire.LivenessDisconnected {
			s.liveness, s.livenessSinceMs = wire.LivenessDisconnected, nowMs
		}
		out = append(out, target{s.kind, s.key})
	}
	return out
}

// observe records a value seen in the registry (written by this queen or
// another). rec carries the queen-owned keys stored with it.
func (t *tracker) observe(id string, tg target, m *wire.Meta, rec *wire.Received, progress *uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := id
	s := t.m[key]
	switch {
	case s == nil:
		s = &sender{kind: tg.kind, key: tg.key, holder: claim{m.InstanceID, m.Seq, rec.ReceivedAtMs},
			intervalMs: m.IntervalMs, firstSeenMs: rec.FirstSeenMs}
		t.m[key] = s
	case s.holder.instance == m.InstanceID:
		if rec.FirstSeenMs != 0 && rec.FirstSeenMs < s.firstSeenMs {
			s.firstSeenMs = rec.FirstSeenMs // learnt from a value written before this queen started
		}
		if m.Seq < s.holder.seq {
			return
		}
		s.holder.seq = m.Seq
		s.holder.lastMs = max(s.holder.lastMs, rec.ReceivedAtMs)
		s.goneAtMs = 0
	default:
		if i := s.ousterIndex(m.InstanceID); i >= 0 {
			if rec.ReceivedAtMs < s.holder.lastMs {
				return // an older instance's value landing late; keep the newer holder
			}
			c := s.ousted[i]
			s.ousted[i] = s.holder
			s.holder = claim{c.instance, max(c.seq, m.Seq), rec.ReceivedAtMs}
		} else {
			s.ousted[1] = s.ousted[0]
			s.ousted[0] = s.holder
			s.holder = claim{m.InstanceID, m.Seq, rec.ReceivedAtMs}
		}
		s.firstSeenMs, s.goneAtMs = rec.FirstSeenMs, 0
	}
	s.intervalMs = m.IntervalMs
	if rec.Conflict {
		s.conflictMs = max(s.conflictMs, rec.ReceivedAtMs)
	}
	if progress != nil {
		s.progress, s.hasProgress = *progress, true
		s.progressAtMs = max(s.progressAtMs, rec.ProgressAtMs)
	}
	s.liveness, s.livenessSinceMs = rec.Liveness.OrAlive(), rec.LivenessSinceMs
	t.setConn(key, s, m.Conn)
}

// seen reports whether the tracker has accepted or observed seq (or a later
// one) of instance under id, or, for a goodbye, that the entry is gone, or
// that instance said goodbye: some queen took that beat.
func (t *tracker) seen(id, instance string, seq uint64, goodbye bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[id]
	if s == nil {
		return false
	}
	if goodbye && s.goneAtMs != 0 || s.left != "" && s.left == instance {
		return true
	}
	if s.holder.instance == instance {
		return s.holder.seq >= seq
	}
	i := s.ousterIndex(instance)
	return i >= 0 && s.ousted[i].seq >= seq
}

// forget marks a key whose entry left (a goodbye of instance, as far as the
// registry showed it) or expired. Its claimants are kept so a replayed
// goodbye or older beat is still refused, while a newer beat of an expired
// instance (a sender back from a partition) is accepted; an instance that
// left is never heard again.
func (t *tracker) forget(key string, left bool, instance string, nowMs int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[key]
	if s == nil {
		return
	}
	if left && instance != "" {
		s.left = strings.Clone(instance)
	}
	if s.goneAtMs == 0 {
		s.goneAtMs = nowMs
		t.setConn(key, s, "")
	}
}

// sweep drops keys gone before cutoffMs, so departed senders do not pile up.
func (t *tracker) sweep(cutoffMs int64) (dropped int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, s := range t.m {
		if s.goneAtMs != 0 && s.goneAtMs < cutoffMs {
			delete(t.m, k)
			dropped++
		}
	}
	return dropped
}

func (t *tracker) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
