package queen

import (
	"container/heap"
	"log/slog"
	"testing"
	"time"

	"github.com/rbee/heartbeat/subjects"
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

// TestQueueOrder: goodbyes go first; a newer beat replacing a waiting one
// keeps the key's place (coalesced, counted); refreshes go in the order
// their stored entries expire.
func TestQueueOrder(t *testing.T) {
	m := &nopMetrics{}
	w := newWriter(slog.New(slog.DiscardHandler), m, 16, map[subjects.Kind]string{subjects.KindWorker: "$KV.w."})
	w.put(beatOp("a", "i", 1, 100, wire.StatusReady))
	w.put(beatOp("b", "i", 1, 200, wire.StatusReady))
	w.put(beatOp("a", "i", 2, 300, wire.StatusBusy)) // replaces a's waiting beat
	bye := beatOp("c", "i", 1, 400, wire.StatusReady)
	bye.del, bye.worker = true, nil
	w.put(bye)
	// Two refreshes: stored entries expiring at 5000 and 4000.
	for key, deadline := range map[string]int64{"d": 5000, "e": 4000} {
		w.slots["$KV.w."+key] = &slot{kind: subjects.KindWorker, key: key, subject: "$KV.w." + key, idx: -1,
			last: beatOp(key, "i", 1, 0, wire.StatusReady), deadlineMs: deadline}
		w.put(beatOp(key, "i", 2, 1000, wire.StatusReady))
	}
	var got []string
	for w.q.Len() > 0 {
		s := heap.Pop(&w.q).(*slot)
		got = append(got, s.key)
		if s.key == "a" && s.pend.seq != 2 {
			t.Fatalf("a's waiting write is seq %d, want the newest (2)", s.pend.seq)
		}
	}
	want := []string{"c", "a", "b", "e", "d"}
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			t.Fatalf("write order %v, want %v", got, want)
		}
	}
	if m.coalesce != 1 {
		t.Fatalf("coalesced %d, want 1", m.coalesce)
	}
}
