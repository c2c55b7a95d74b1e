package events_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

func TestParseFilter(t *testing.T) {
	tests := []struct {
		name             string
		include, exclude []string
		keeps, drops     []string
		err              error
	}{
		{name: "everything", keeps: []string{"joined", "updated", "expired"}},
		{name: "include list", include: []string{"expired,left", "disconnected"}, keeps: []string{"expired", "left", "disconnected"}, drops: []string{"joined", "updated"}},
		{name: "exclude", exclude: []string{"updated"}, keeps: []string{"joined", "stalled"}, drops: []string{"updated"}},
		{name: "both", include: []string{"joined,updated"}, exclude: []string{"updated"}, keeps: []string{"joined"}, drops: []string{"updated", "left"}},
		{name: "unknown", include: []string{"exploded"}, err: events.ErrUnknownEvent},
		{name: "refreshed is not history", exclude: []string{"refreshed"}, err: events.ErrUnknownEvent},
		{name: "nothing left", include: []string{"joined"}, exclude: []string{"joined"}, err: events.ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := events.ParseFilter(tc.include, tc.exclude)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tc.keeps {
				if !f.Match(k) {
					t.Errorf("%s drops %s", f, k)
				}
			}
			for _, d := range tc.drops {
				if f.Match(d) {
					t.Errorf("%s keeps %s", f, d)
				}
			}
		})
	}
	lc := events.LivenessChanges()
	if lc.Match("updated") || !lc.Match("expired") || !lc.Match("disconnected") || len(lc.Types()) != len(registry.EventTypes)-1 {
		t.Errorf("LivenessChanges %s keeps %v", lc, lc.Types())
	}
}

// TestReadByEventType: the stream filters the history by event type, with
// and without a hive.
func TestReadByEventType(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	ensure(t, js, events.DefaultStreamConfig())
	p := startPublisher(t, js, "q")
	p.OnEvent(workerEvent(registry.Joined, "h1", "w1", 1))
	p.OnEvent(workerEvent(registry.Updated, "h1", "w1", 2))
	p.OnEvent(workerEvent(registry.Updated, "h1", "w1", 3))
	p.OnEvent(workerEvent(registry.Joined, "h2", "w1", 4))
	p.OnEvent(workerEvent(registry.Expired, "h1", "w1", 5))
	waitFor(t, 10*time.Second, func() error {
		if n := len(readAll(t, js, events.Query{})); n != 5 {
			return fmt.Errorf("%d events stored", n)
		}
		return nil
	})
	if got := keysOf(readAll(t, js, events.Query{Filter: events.LivenessChanges()})); !slices.Equal(got, []string{"joined h1.w1", "joined h2.w1", "expired h1.w1"}) {
		t.Errorf("liveness changes: %v", got)
	}
	only, err := events.ParseFilter([]string{"updated"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(readAll(t, js, events.Query{Filter: only, HiveID: "h1"})); !slices.Equal(got, []string{"updated h1.w1", "updated h1.w1"}) {
		t.Errorf("updated on h1: %v", got)
	}
	if got := keysOf(readAll(t, js, events.Query{Filter: events.LivenessChanges(), HiveID: "h2"})); !slices.Equal(got, []string{"joined h2.w1"}) {
		t.Errorf("liveness changes on h2: %v", got)
	}
}

// TestReconcile: entries the history shows present and the registry no
// longer holds get one expired event (previous "unseen"), once however many
// queens reconcile; entries that left, expired or are present get none.
func TestReconcile(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	ensure(t, js, events.DefaultStreamConfig())
	p := startPublisher(t, js, "q1")
	p.OnEvent(workerEvent(registry.Joined, "h1", "dead", 1))
	p.OnEvent(workerEvent(registry.Updated, "h1", "dead", 2))
	p.OnEvent(workerEvent(registry.Joined, "h1", "alive", 3))
	p.OnEvent(workerEvent(registry.Joined, "h1", "gone", 4))
	p.OnEvent(workerEvent(registry.Left, "h1", "gone", 5))
	p.OnEvent(hiveEvent(registry.Joined, "h2", 6))
	waitFor(t, 10*time.Second, func() error {
		if n := len(readAll(t, js, events.Query{})); n != 6 {
			return fmt.Errorf("%d events stored", n)
		}
		return nil
	})
	w := &wire.WorkerEntry{}
	w.HiveID, w.WorkerID = "h1", "alive"
	roster := events.TakeRoster(staticRoster{workers: []*wire.WorkerEntry{w}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, queen := range []string{"q2", "q3"} {
		n, err := events.Reconcile(ctx, js, subjects.Default(), queen, roster.Has)
		if err != nil {
			t.Fatal(err)
		}
		if want := []int{2, 0}[i]; n != want {
			t.Errorf("%s reconciled %d events, want %d", queen, n, want)
		}
	}
	rs := readAll(t, js, events.Query{Filter: mustFilter(t, "expired")})
	got := keysOf(rs)
	slices.Sort(got)
	if !slices.Equal(got, []string{"expired h1.dead", "expired h2"}) {
		t.Fatalf("expired events %v, want h1.dead and h2 once each", got)
	}
	for _, r := range rs {
		if r.Event.Previous != events.Unseen || r.Event.QueenID != "q2" {
			t.Errorf("%s: previous %q queen %q, want %q by q2", r.Event.Key, r.Event.Previous, r.Event.QueenID, events.Unseen)
		}
		if r.Event.Key == "h1.dead" && r.Event.ModelID != "model-dead" {
			t.Errorf("h1.dead: model %q, want the last event's", r.Event.ModelID)
		}
	}
}

func TestReconcileNoHistory(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	_, err := events.Reconcile(t.Context(), js, subjects.Default(), "q", func(subjects.Kind, string) bool { return false })
	if !errors.Is(err, events.ErrNoHistory) {
		t.Fatalf("err %v, want ErrNoHistory", err)
	}
}

// TestLiveRecordsKeys: Live records the keys of history events, not of
// refreshes, and nothing after Stop (run with -race: OnEvent and Has may be
// called concurrently).
func TestLiveRecordsKeys(t *testing.T) {
	var l events.Live
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			l.OnEvent(workerEvent(registry.Updated, "h", fmt.Sprint("w", i), uint64(i)))
		}
	}()
	for range 100 {
		l.Has(subjects.KindWorker, "h.w1")
	}
	<-done
	l.OnEvent(workerEvent(registry.Refreshed, "h", "fresh", 1))
	if !l.Has(subjects.KindWorker, "h.w99") || l.Has(subjects.KindWorker, "h.fresh") || l.Has(subjects.KindHive, "h.w99") {
		t.Error("Live recorded the wrong keys")
	}
	l.Stop()
	l.OnEvent(workerEvent(registry.Joined, "h", "late", 1))
	if l.Has(subjects.KindWorker, "h.late") {
		t.Error("Live recorded after Stop")
	}
}

type staticRoster struct {
	workers []*wire.WorkerEntry
	hives   []*wire.HiveEntry
}

func (s staticRoster) Workers() []*wire.WorkerEntry { return s.workers }
func (s staticRoster) Hives() []*wire.HiveEntry     { return s.hives }

func mustFilter(t *testing.T, include ...string) events.Filter {
	t.Helper()
	f, err := events.ParseFilter(include, nil)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
