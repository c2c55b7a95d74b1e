package queen

import (
	"strings"
	"sync"

	"github.com/rbee/heartbeat/wire"
)

// sender is what the queen remembers of one key to refuse replays.
type sender struct {
	instance    string
	seq         uint64 // highest seq accepted for instance
	firstSeenMs int64  // queen clock at the first accepted beat of instance
	retired     string // the instance before this one: its beats are stale
	goneAtMs    int64  // queen clock when the entry left or expired; 0 while live
}

// tracker holds the last accepted (instance, seq) per registry key. It keeps
// its own copies of the key and instance ID of a beat: those share their
// memory with the beat's other strings, which the tracker should not hold alive. It is fed
// by accepted beats and by the KV watcher (what other queens accepted), so a
// restarted queen and a queue group of queens agree on what is stale.
type tracker struct {
	mu sync.Mutex
	m  map[string]*sender
}

func newTracker() *tracker { return &tracker{m: map[string]*sender{}} }

// admit decides whether a beat is fresh; if so it records it and returns the
// first-seen time of its instance.
func (t *tracker) admit(key string, m *wire.Meta, nowMs int64) (firstSeenMs int64, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[key]
	switch {
	case s == nil:
		t.m[strings.Clone(key)] = &sender{instance: strings.Clone(m.InstanceID), seq: m.Seq, firstSeenMs: nowMs}
		return nowMs, true
	case s.instance == m.InstanceID:
		if m.Seq <= s.seq {
			return 0, false
		}
		s.seq = m.Seq
		if s.goneAtMs != 0 { // back after leaving or expiring: a new stay
			s.goneAtMs, s.firstSeenMs = 0, nowMs
		}
		return s.firstSeenMs, true
	case s.retired == m.InstanceID:
		return 0, false
	default: // a new instance: the sender restarted
		*s = sender{instance: strings.Clone(m.InstanceID), seq: m.Seq, firstSeenMs: nowMs, retired: s.instance}
		return nowMs, true
	}
}

// observe records a value seen in KV (written by this or another queen).
func (t *tracker) observe(key string, m wire.Meta, rec wire.Received) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[key]
	switch {
	case s == nil:
		t.m[key] = &sender{instance: m.InstanceID, seq: m.Seq, firstSeenMs: rec.FirstSeenMs}
	case s.instance == m.InstanceID:
		if m.Seq > s.seq {
			s.seq = m.Seq
			s.goneAtMs = 0
			s.firstSeenMs = rec.FirstSeenMs
		}
	case s.retired == m.InstanceID:
		// An older instance's value landing late; KV order is authoritative
		// only for what comes after, so keep the newer instance.
	default:
		*s = sender{instance: m.InstanceID, seq: m.Seq, firstSeenMs: rec.FirstSeenMs, retired: s.instance}
	}
}

// latest reports whether seq is still the newest accepted beat of key.
func (t *tracker) latest(key string, instance string, seq uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[key]
	return s != nil && s.instance == instance && s.seq == seq
}

// forget marks a key whose entry left or expired. Its instance and seq are
// kept so a replayed goodbye or older beat is still refused, while a newer
// beat of the same instance (a sender back from a partition) is accepted.
func (t *tracker) forget(key string, nowMs int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.m[key]; s != nil && s.goneAtMs == 0 {
		s.goneAtMs = nowMs
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
