package registry_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// checkFor polls f until it returns nil, failing with its last error at the
// deadline (testutil.CheckFor).
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, 20*time.Millisecond, f)
}

type recorder struct {
	mu  sync.Mutex
	evs []registry.Event
}

func (r *recorder) add(ev registry.Event) { r.mu.Lock(); r.evs = append(r.evs, ev); r.mu.Unlock() }
func (r *recorder) types(key string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.evs {
		if e.Key == key {
			out = append(out, string(e.Type))
		}
	}
	return out
}

func (r *recorder) last(key string) registry.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.evs) - 1; i >= 0; i-- {
		if r.evs[i].Key == key {
			return r.evs[i]
		}
	}
	return registry.Event{}
}

func buckets(t *testing.T) (jetstream.JetStream, jetstream.KeyValue, jetstream.KeyValue) {
	t.Helper()
	srv := testutil.Server(t)
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string) jetstream.KeyValue {
		kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: name, History: 1})
		if err != nil {
			t.Fatal(err)
		}
		return kv
	}
	return js, mk("rbee_workers"), mk("rbee_hives")
}

func workerValue(t *testing.T, inst string, seq uint64, status wire.Status, l wire.Liveness) []byte {
	t.Helper()
	b, err := wire.Marshal(&wire.WorkerEntry{
		Worker:   wire.Worker{Meta: wire.Meta{V: 1, InstanceID: inst, Seq: seq, IntervalMs: 1000, Health: wire.Healthy}, HiveID: "h", WorkerID: "w", Status: status},
		Received: wire.Received{Liveness: l},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEvents: each kind of change in the bucket is one event of the right
// type, and the entries present at the start produce none.
func TestEvents(t *testing.T) {
	js, wkv, _ := buckets(t)
	ctx := t.Context()
	put := func(key string, v []byte) {
		t.Helper()
		if _, err := wkv.Put(ctx, key, v); err != nil {
			t.Fatal(err)
		}
	}
	put("h.before", workerValue(t, "a", 1, wire.StatusReady, ""))
	rec := &recorder{}
	w, err := registry.Watch(ctx, js, registry.Config{Scheme: subjects.Default(), OnEvent: rec.add})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// Each write waits for its event: with History 1 a watcher may skip a
	// value that a newer one replaced before it was delivered.
	steps := []struct {
		v    []byte
		want string
	}{
		{workerValue(t, "a", 1, wire.StatusReady, ""), "joined"},
		{workerValue(t, "a", 2, wire.StatusReady, ""), ""}, // a refresh: no event
		{workerValue(t, "a", 3, wire.StatusBusy, ""), "updated"},
		{workerValue(t, "a", 4, wire.StatusBusy, wire.LivenessStalled), "stalled"},
		{workerValue(t, "a", 5, wire.StatusBusy, ""), "recovered"},
		{workerValue(t, "a", 6, wire.StatusBusy, wire.LivenessDisconnected), "disconnected"},
		{workerValue(t, "a", 7, wire.StatusBusy, ""), "reconnected"},
		{workerValue(t, "b", 1, wire.StatusBusy, ""), "restarted"},
	}
	var got []string
	for _, st := range steps {
		put("h.w", st.v)
		if st.want == "" {
			continue
		}
		got = append(got, st.want)
		want := strings.Join(got, " ")
		checkFor(t, 5*time.Second, func() error {
			if have := strings.Join(rec.types("h.w"), " "); have != want {
				return fmt.Errorf("h.w events %q, want %q", have, want)
			}
			return nil
		})
	}
	if err := wkv.Delete(ctx, "h.w"); err != nil { // left
		t.Fatal(err)
	}
	put("h.x", workerValue(t, "c", 1, wire.StatusReady, ""))
	checkFor(t, 5*time.Second, func() error {
		if _, _, ok := w.Worker("h.x"); !ok {
			return fmt.Errorf("h.x not mirrored")
		}
		return nil
	})
	if err := wkv.Purge(ctx, "h.x"); err != nil { // expired (as the server's TTL marker)
		t.Fatal(err)
	}
	want := strings.Join(append(got, "left"), " ")
	checkFor(t, 5*time.Second, func() error {
		if have := strings.Join(rec.types("h.w"), " "); have != want {
			return fmt.Errorf("h.w events %q, want %q", have, want)
		}
		if have := strings.Join(rec.types("h.x"), " "); have != "joined expired" {
			return fmt.Errorf("h.x events %q, want joined expired", have)
		}
		return nil
	})
	// A goodbye's delete marker over the expiry's (a sender taken for dead
	// that then said goodbye) is a left event with the expired entry; a
	// second delete marker is no event.
	if err := wkv.Delete(ctx, "h.x"); err != nil {
		t.Fatal(err)
	}
	if err := wkv.Delete(ctx, "h.w"); err != nil {
		t.Fatal(err)
	}
	put("h.y", workerValue(t, "d", 1, wire.StatusReady, "")) // the last change: its event ends the wait
	checkFor(t, 5*time.Second, func() error {
		if have := strings.Join(rec.types("h.y"), " "); have != "joined" {
			return fmt.Errorf("h.y events %q, want joined", have)
		}
		return nil
	})
	if have := strings.Join(rec.types("h.x"), " "); have != "joined expired left" {
		t.Fatalf("h.x events %q, want joined expired left", have)
	}
	if have := strings.Join(rec.types("h.w"), " "); have != want {
		t.Fatalf("h.w events %q after a second delete marker, want %q", have, want)
	}
	if ev := rec.last("h.x"); ev.Worker == nil || ev.Worker.InstanceID != "c" {
		t.Fatalf("the left event after the expiry carries %+v, want the expired entry (instance c)", ev.Worker)
	}
	if got := rec.types("h.before"); len(got) != 0 {
		t.Fatalf("an entry present at the start produced %v", got)
	}
	if _, _, ok := w.Worker("h.w"); ok {
		t.Fatal("a left entry is still mirrored")
	}
	if e, _, ok := w.Worker("h.before"); !ok || e.InstanceID != "a" {
		t.Fatalf("mirror of h.before: %+v %v", e, ok)
	}
}

// TestUndecodable: a value that does not decode is counted, logged and left
// out of the mirror; it changes nothing else.
func TestUndecodable(t *testing.T) {
	js, wkv, _ := buckets(t)
	var log testutil.Buffer
	rec := &recorder{}
	w, err := registry.Watch(t.Context(), js, registry.Config{Scheme: subjects.Default(), OnEvent: rec.add,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := wkv.Put(t.Context(), "h.bad", []byte("not msgpack")); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if n := w.Undecodable(); n != 1 {
			return fmt.Errorf("undecodable %d, want 1", n)
		}
		if !strings.Contains(log.String(), "undecodable registry value") {
			return fmt.Errorf("not logged: %q", log.String())
		}
		return nil
	})
	if _, _, ok := w.Worker("h.bad"); ok || len(rec.types("h.bad")) != 0 {
		t.Fatal("an undecodable value reached the mirror or the events")
	}
}

// TestEventsOneAtATime: OnEvent is never entered by two goroutines at once,
// though the worker and hive buckets are watched by two.
func TestEventsOneAtATime(t *testing.T) {
	js, wkv, hkv := buckets(t)
	var in, overlaps, total, hives atomic.Int64
	w, err := registry.Watch(t.Context(), js, registry.Config{Scheme: subjects.Default(), Refreshes: true,
		OnEvent: func(ev registry.Event) {
			if ev.Kind == subjects.KindHive {
				hives.Add(1)
			}
			if in.Add(1) > 1 {
				overlaps.Add(1)
			}
			time.Sleep(100 * time.Microsecond) // widen the window a second caller would hit
			total.Add(1)
			in.Add(-1)
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	hive, _ := wire.Marshal(&wire.HiveEntry{Hive: wire.Hive{Meta: wire.Meta{V: 1, InstanceID: "h", Seq: 1, IntervalMs: 1000}, HiveID: "h"}})
	const n = 200
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range n {
			_, _ = wkv.Put(context.Background(), "h.w", workerValue(t, "a", uint64(i+1), wire.StatusReady, ""))
		}
	}()
	go func() {
		defer wg.Done()
		for range n {
			_, _ = hkv.Put(context.Background(), "h", hive)
		}
	}()
	wg.Wait()
	// With History 1 a watcher may skip a value replaced before it was
	// delivered; it always ends on the last one.
	checkFor(t, 10*time.Second, func() error {
		if e, _, ok := w.Worker("h.w"); !ok || e.Seq != n || hives.Load() == 0 {
			return fmt.Errorf("mirror %+v, %d events (%d hive)", e, total.Load(), hives.Load())
		}
		return nil
	})
	if o := overlaps.Load(); o != 0 {
		t.Fatalf("OnEvent entered concurrently %d times", o)
	}
}

// TestKnownShared: a put whose decoded value Config.Known returns is
// mirrored as that value, not decoded again; other puts are decoded.
func TestKnownShared(t *testing.T) {
	js, wkv, _ := buckets(t)
	ctx := t.Context()
	var (
		mu        sync.Mutex
		sharedRev uint64
	)
	shared := &wire.WorkerEntry{Worker: wire.Worker{Meta: wire.Meta{InstanceID: "shared", Seq: 9}, HiveID: "h", WorkerID: "w"}}
	w, err := registry.Watch(ctx, js, registry.Config{Scheme: subjects.Default(),
		Known: func(kind subjects.Kind, key string, rev uint64, _ []byte) any {
			mu.Lock()
			defer mu.Unlock()
			if kind == subjects.KindWorker && key == "h.w" && rev == sharedRev {
				return shared
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock() // the put's revision is known before the watch can deliver it
	rev, err := wkv.Put(ctx, "h.w", workerValue(t, "stored", 1, wire.StatusReady, ""))
	sharedRev = rev
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wkv.Put(ctx, "h.other", workerValue(t, "stored", 1, wire.StatusReady, "")); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		e, r, ok := w.Worker("h.w")
		if !ok || r != rev {
			return fmt.Errorf("h.w: present %v at %d, want revision %d", ok, r, rev)
		}
		if e != shared {
			return fmt.Errorf("h.w mirrored as a decoded copy (instance %q), not the known value", e.InstanceID)
		}
		if o, _, ok := w.Worker("h.other"); !ok || o.InstanceID != "stored" {
			return fmt.Errorf("h.other: %v %+v", ok, o)
		}
		return nil
	})
}
