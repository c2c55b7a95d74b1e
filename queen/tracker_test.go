package queen

import (
	"log/slog"
	"testing"

	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

var testTarget = target{subjects.KindWorker, "h.w"}

// admit is admitLocked under the writer's lock.
func (w *writer) admit(tg target, m *wire.Meta, goodbye bool, busy bool, progress *uint64, nowMs int64) verdict {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.admitLocked(tg, m, goodbye, busy, progress, nowMs)
}

// newTracker returns a writer to judge beats with: the tracker's state is
// its slots'.
func newTracker(cfg Config) *writer {
	w := newWriter(slog.New(slog.DiscardHandler), &nopMetrics{}, 16, map[subjects.Kind]string{subjects.KindWorker: "$KV.rbee_workers."})
	w.cfg = cfg
	return w
}

// beat is one step of a tracker table: a beat (or goodbye) of instance inst
// with seq at queen time now (ms), every 1000 ms.
type beat struct {
	name    string
	inst    string
	seq     uint64
	now     int64
	goodbye bool
	ok      bool
	reason  string
}

func runBeats(t *testing.T, tr *writer, steps []beat) {
	t.Helper()
	for _, s := range steps {
		m := &wire.Meta{InstanceID: s.inst, Seq: s.seq, IntervalMs: 1000, Conn: "srv/" + s.inst}
		v := tr.admit(testTarget, m, s.goodbye, false, nil, s.now)
		if v.ok != s.ok || (!v.ok && v.reason != s.reason) {
			t.Fatalf("%s: admit = ok %v reason %q (%s); want ok %v reason %q", s.name, v.ok, v.reason, v.detail, s.ok, s.reason)
		}
	}
}

func TestTrackerReplayAndRestart(t *testing.T) {
	tr := newTracker(DefaultConfig())
	runBeats(t, tr, []beat{
		{"first beat", "a", 1, 100, false, true, ""},
		{"next beat", "a", 2, 1100, false, true, ""},
		{"replay", "a", 2, 1200, false, false, "replay"},
		{"older", "a", 1, 1300, false, false, "replay"},
		{"gap is fine", "a", 9, 2100, false, true, ""},
		{"restart", "b", 1, 2500, false, true, ""},
		{"old instance replayed after restart", "a", 9, 2600, false, false, "replay"},
		{"new instance continues", "b", 2, 3500, false, true, ""},
	})
}

// TestTrackerSuperseded: an older beat decoded after a newer one was
// accepted is superseded if it arrived before that one (it waited in the reserve),
// a replay if it arrived after.
func TestTrackerSuperseded(t *testing.T) {
	tr := newTracker(DefaultConfig())
	runBeats(t, tr, []beat{
		{"first beat", "a", 1, 100, false, true, ""},
		{"newer beat", "a", 3, 1100, false, true, ""},
		{"held beat that arrived before it", "a", 2, 1000, false, false, "superseded"},
		{"the same seq arriving after it", "a", 2, 1200, false, false, "replay"},
	})
}

// TestTrackerForgeryIsBounded: no single forged message locks the real
// sender out for longer than one TTL (3 s here), and two instances beating
// under one key are reported as a conflict.
func TestTrackerForgeryIsBounded(t *testing.T) {
	t.Run("huge seq", func(t *testing.T) {
		tr := newTracker(DefaultConfig())
		runBeats(t, tr, []beat{
			{"real", "a", 5, 1000, false, true, ""},
			{"forged seq 2^53", "a", 1 << 53, 1100, false, false, "seq"},
			{"real goes on", "a", 6, 2000, false, true, ""},
		})
	})
	t.Run("goodbye with a new instance", func(t *testing.T) {
		tr := newTracker(DefaultConfig())
		runBeats(t, tr, []beat{
			{"real", "a", 5, 1000, false, true, ""},
			{"forged goodbye", "x", 1, 1100, true, false, "conflict"},
			{"real goes on", "a", 6, 2000, false, true, ""},
		})
	})
	t.Run("beat with a new instance", func(t *testing.T) {
		tr := newTracker(DefaultConfig())
		runBeats(t, tr, []beat{
			{"real", "a", 5, 1000, false, true, ""},
			{"forged instance takes the key", "x", 1, 1100, false, true, ""},
			{"real while the forger is fresh", "a", 6, 2000, false, false, "conflict"},
			{"real after 1.5 of its intervals of forger silence", "a", 7, 2700, false, true, ""},
			{"forger replay", "x", 1, 2800, false, false, "replay"},
		})
		m := &wire.Meta{InstanceID: "a", Seq: 8, IntervalMs: 1000}
		if v := tr.admit(testTarget, m, false, false, nil, 3700); !v.ok || !v.conflict {
			t.Fatalf("beat after a conflict: ok %v conflict %v, want the entry flagged", v.ok, v.conflict)
		}
		m.Seq = 12
		if v := tr.admit(testTarget, m, false, false, nil, 8000); !v.ok || v.conflict {
			t.Fatalf("a TTL after the conflict: ok %v conflict %v, want it cleared", v.ok, v.conflict)
		}
	})
	t.Run("same instance, next seq", func(t *testing.T) {
		tr := newTracker(DefaultConfig())
		runBeats(t, tr, []beat{
			{"real", "a", 5, 1000, false, true, ""},
			{"forged next seq", "a", 6, 1100, false, true, ""},
			{"real's next is a replay", "a", 6, 2000, false, false, "replay"},
			{"real's one after goes in", "a", 7, 3000, false, true, ""},
		})
	})
	t.Run("replay after a whole TTL of silence", func(t *testing.T) {
		tr := newTracker(DefaultConfig())
		runBeats(t, tr, []beat{
			{"forged high seq, plausible", "a", 900, 1000, false, true, ""},
			{"real, low seq, refused", "a", 6, 2000, false, false, "replay"},
			{"real, a TTL after the forgery", "a", 9, 4100, false, true, ""},
		})
	})
}

// TestTrackerLeftNeverReturns: once the registry shows an instance left, or
// this queen accepted its goodbye, no beat of that instance is accepted again
// (a reserve's late copy, a retry), while a new instance is.
func TestTrackerLeftNeverReturns(t *testing.T) {
	tr := newTracker(DefaultConfig())
	runBeats(t, tr, []beat{{"beat", "a", 5, 100, false, true, ""}})
	tr.forget(testTarget, 1, true, "a", 200) // another queen wrote its goodbye
	runBeats(t, tr, []beat{
		{"older beat of the left instance", "a", 5, 300, false, false, "replay"},
		{"newer beat of the left instance", "a", 7, 400, false, false, "replay"},
		{"a restart", "b", 1, 500, false, true, ""},
		{"its goodbye", "b", 2, 600, true, true, ""},
		{"a late copy of b's last beat", "b", 1, 700, false, false, "replay"},
	})
	if !tr.seen(testTarget, "a", 1, false) || !tr.seen(testTarget, "b", 1, false) {
		t.Fatal("a left instance's beats must count as taken, so no reserve rescues them")
	}
}

func TestTrackerForgetAndReturn(t *testing.T) {
	tr := newTracker(DefaultConfig())
	runBeats(t, tr, []beat{{"beat", "a", 5, 100, false, true, ""}})
	tr.forget(testTarget, 1, false, "a", 200)
	runBeats(t, tr, []beat{
		{"replayed goodbye of a departed sender", "a", 5, 300, true, false, "replay"},
		{"back after expiry", "a", 6, 400, false, true, ""},
	})
	tr.forget(testTarget, 1, false, "a", 500)
	if n := tr.sweep(501); n != 1 || len(tr.slots) != 0 {
		t.Fatalf("sweep dropped %d, %d left", n, len(tr.slots))
	}
}

func TestTrackerObserve(t *testing.T) {
	tr := newTracker(DefaultConfig())
	// Another queen accepted seq 7 of instance a: this queen refuses 7 and below.
	tr.observe(testTarget, 1, &wire.Meta{InstanceID: "a", Seq: 7, IntervalMs: 1000}, &wire.Received{ReceivedAtMs: 90, FirstSeenMs: 50}, nil)
	runBeats(t, tr, []beat{{"seq accepted elsewhere", "a", 7, 100, false, false, "replay"}})
	m := &wire.Meta{InstanceID: "a", Seq: 8, IntervalMs: 1000}
	if v := tr.admit(testTarget, m, false, false, nil, 1100); !v.ok || v.rec.FirstSeenMs != 50 {
		t.Fatalf("admit after observe = %+v, want first seen 50 from KV", v)
	}
}

// TestTrackerStall: a busy worker whose progress stands still for
// StallAfter of its intervals is stalled; growth makes it alive again; a
// worker that sends no progress is never stalled.
func TestTrackerStall(t *testing.T) {
	tr := newTracker(DefaultConfig()) // StallAfter 3
	p := func(n uint64) *uint64 { return &n }
	steps := []struct {
		name     string
		now      int64
		busy     bool
		progress *uint64
		want     wire.Liveness
	}{
		{"idle", 0, false, p(10), ""},
		{"busy, progress grows", 1000, true, p(20), ""},
		{"busy, frozen 1", 2000, true, p(20), ""},
		{"busy, frozen 2", 3000, true, p(20), ""},
		{"busy, frozen 3 intervals", 4000, true, p(20), wire.LivenessStalled},
		{"still frozen", 5000, true, p(20), wire.LivenessStalled},
		{"grows again", 6000, true, p(21), ""},
		{"no progress sent", 20000, true, nil, ""},
	}
	for i, s := range steps {
		m := &wire.Meta{InstanceID: "a", Seq: uint64(i + 1), IntervalMs: 1000}
		v := tr.admit(testTarget, m, false, s.busy, s.progress, s.now)
		if !v.ok || v.rec.Liveness != s.want {
			t.Fatalf("%s: ok %v liveness %q, want %q", s.name, v.ok, v.rec.Liveness, s.want)
		}
	}
}

// TestTrackerClosed: a closed connection names the live entries last beating
// on it, and a goodbye before the close leaves nothing to mark.
func TestTrackerClosed(t *testing.T) {
	tr := newTracker(DefaultConfig())
	m := &wire.Meta{InstanceID: "a", Seq: 1, IntervalMs: 1000, Conn: "S/1"}
	tr.admit(testTarget, m, false, false, nil, 0)
	other := target{subjects.KindWorker, "h.v"}
	tr.admit(other, &wire.Meta{InstanceID: "b", Seq: 1, IntervalMs: 1000, Conn: "S/2"}, false, false, nil, 0)
	if got := tr.closed("S/1", 10); len(got) != 1 || got[0] != testTarget {
		t.Fatalf("closed(S/1) = %v, want [%v]", got, testTarget)
	}
	tr.admit(other, &wire.Meta{InstanceID: "b", Seq: 2, IntervalMs: 1000, Conn: "S/2"}, true, false, nil, 20)
	if got := tr.closed("S/2", 30); len(got) != 0 {
		t.Fatalf("closed after a goodbye = %v, want none", got)
	}
}
