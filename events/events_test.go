package events_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// waitFor polls check until it returns nil or timeout passes, then fails
// the test with check's last error.
func waitFor(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func jsOn(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(testutil.Connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func ensure(t testing.TB, js jetstream.JetStream, c events.StreamConfig) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := events.EnsureStream(ctx, js, subjects.Default(), c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func startPublisher(t *testing.T, js jetstream.JetStream, queenID string) *events.Publisher {
	t.Helper()
	c := events.DefaultConfig(queenID)
	c.Logger = testutil.Logger(t)
	p, err := events.NewPublisher(js, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(context.Background()) })
	return p
}

// workerEvent is a registry event of worker hive.id at KV revision rev.
func workerEvent(typ registry.EventType, hive, id string, rev uint64) registry.Event {
	w := &wire.WorkerEntry{}
	w.HiveID, w.WorkerID, w.Status, w.ModelID = hive, id, wire.StatusReady, "model-"+id
	w.InstanceID, w.Health, w.HealthReason = "inst-"+id, wire.Degraded, "slow"
	w.Liveness = wire.LivenessStalled
	return registry.Event{Type: typ, Kind: subjects.KindWorker, Key: subjects.WorkerKey(hive, id), HiveID: hive,
		WorkerID: id, At: time.UnixMilli(1_700_000_000_000 + int64(rev)), Revision: rev, Worker: w, Previous: "starting"}
}

func hiveEvent(typ registry.EventType, hive string, rev uint64) registry.Event {
	h := &wire.HiveEntry{}
	h.HiveID, h.InstanceID, h.Health = hive, "inst-"+hive, wire.Healthy
	return registry.Event{Type: typ, Kind: subjects.KindHive, Key: hive, HiveID: hive, At: time.UnixMilli(1_700_000_000_000), Revision: rev, Hive: h}
}

func streamMsgs(t testing.TB, st jetstream.Stream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// readAll replays the history matching q and returns it.
func readAll(t *testing.T, js jetstream.JetStream, q events.Query) []events.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []events.Record
	err := events.Read(ctx, js, subjects.Default(), q, func(r events.Record) error {
		out = append(out, r)
		return nil
	})
	if err != nil {
		t.Fatalf("read %+v: %v", q, err)
	}
	return out
}

func keysOf(rs []events.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Event.Event+" "+r.Event.Key)
	}
	return out
}

// TestPublishAndReplay publishes events and reads them back: subject,
// headers, Nats-Msg-Id and every payload key.
func TestPublishAndReplay(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	st := ensure(t, js, events.DefaultStreamConfig())
	p := startPublisher(t, js, "queen-a")
	p.OnEvent(workerEvent(registry.Joined, "h1", "w1", 7))
	p.OnEvent(hiveEvent(registry.Expired, "h2", 3))
	waitFor(t, 10*time.Second, func() error {
		if n := streamMsgs(t, st); n != 2 {
			return fmt.Errorf("stream holds %d events, want 2; publisher %+v", n, p.Stats())
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Subject != "rbee.evt.joined.h1.w1" {
		t.Fatalf("subject %q", raw.Subject)
	}
	for k, want := range map[string]string{"Content-Type": "application/msgpack", "Rbee-Schema": "event/1", "Nats-Msg-Id": "worker:h1.w1:7:joined"} {
		if got := raw.Header.Get(k); got != want {
			t.Fatalf("header %s = %q, want %q (all %v)", k, got, want, raw.Header)
		}
	}
	rs := readAll(t, js, events.Query{})
	if len(rs) != 2 {
		t.Fatalf("replayed %v", keysOf(rs))
	}
	want := wire.Event{V: 1, Event: "joined", Kind: "worker", Key: "h1.w1", HiveID: "h1", WorkerID: "w1", AtMs: 1_700_000_000_007,
		Revision: 7, QueenID: "queen-a", Previous: "starting", InstanceID: "inst-w1", Status: "ready", Health: "degraded",
		HealthReason: "slow", Liveness: "stalled", ModelID: "model-w1"}
	if rs[0].Err != nil || rs[0].Event != want {
		t.Fatalf("event 1:\n got %+v (err %v)\nwant %+v", rs[0].Event, rs[0].Err, want)
	}
	if rs[1].Subject != "rbee.evt.expired.h2" || rs[1].Event.Kind != "hive" || rs[1].Event.WorkerID != "" || rs[1].Seq != 2 {
		t.Fatalf("event 2: %+v", rs[1])
	}
	if s := p.Stats(); s.Published != 2 || s.Duplicates != 0 || s.Failed != 0 || s.Dropped != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestTwoPublishersStoreOnce hands the same KV changes to two publishers
// (two queens watching one bucket): the stream stores each once.
func TestTwoPublishersStoreOnce(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	st := ensure(t, js, events.DefaultStreamConfig())
	a := startPublisher(t, js, "queen-a")
	b := startPublisher(t, jsOn(t, srv.ClientURL()), "queen-b")
	const n = 50
	for i := range uint64(n) {
		ev := workerEvent(registry.Updated, "h1", fmt.Sprintf("w%d", i%5), i+1)
		a.OnEvent(ev)
		b.OnEvent(ev)
	}
	waitFor(t, 20*time.Second, func() error {
		sa, sb := a.Stats(), b.Stats()
		if got := sa.Published + sa.Duplicates + sb.Published + sb.Duplicates; got != 2*n {
			return fmt.Errorf("acknowledged %d of %d: a %+v b %+v", got, 2*n, sa, sb)
		}
		return nil
	})
	if got := streamMsgs(t, st); got != n {
		t.Fatalf("stream holds %d events, want %d: a %+v b %+v", got, n, a.Stats(), b.Stats())
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.Published+sb.Published != n || sa.Duplicates+sb.Duplicates != n {
		t.Fatalf("a %+v b %+v: want %d new and %d duplicates in all", sa, sb, n, n)
	}
}

// TestRetention applies a tiny max age and a tiny max bytes.
func TestRetention(t *testing.T) {
	t.Run("max age", func(t *testing.T) {
		srv := testutil.Server(t)
		js := jsOn(t, srv.ClientURL())
		c := events.DefaultStreamConfig()
		c.MaxAge = time.Second
		st := ensure(t, js, c)
		p := startPublisher(t, js, "q")
		for i := range uint64(5) {
			p.OnEvent(workerEvent(registry.Joined, "h1", fmt.Sprintf("w%d", i), i+1))
		}
		waitFor(t, 10*time.Second, func() error {
			if s := p.Stats(); s.Published != 5 {
				return fmt.Errorf("published %+v", s)
			}
			return nil
		})
		waitFor(t, 15*time.Second, func() error {
			if n := streamMsgs(t, st); n != 0 {
				return fmt.Errorf("stream still holds %d events after their max age", n)
			}
			return nil
		})
	})
	t.Run("max bytes", func(t *testing.T) {
		srv := testutil.Server(t)
		js := jsOn(t, srv.ClientURL())
		c := events.DefaultStreamConfig()
		c.MaxBytes = 4 << 10
		st := ensure(t, js, c)
		p := startPublisher(t, js, "q")
		const n = 200
		for i := range uint64(n) {
			p.OnEvent(workerEvent(registry.Updated, "h1", "w1", i+1))
		}
		waitFor(t, 20*time.Second, func() error {
			if s := p.Stats(); s.Published != n {
				return fmt.Errorf("published %+v", s)
			}
			return nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Bytes > 4<<10 || info.State.FirstSeq <= 1 || info.State.LastSeq != n {
			t.Fatalf("state %+v: want at most 4 KiB, the oldest events gone, the newest kept", info.State)
		}
	})
	t.Run("update", func(t *testing.T) {
		srv := testutil.Server(t)
		js := jsOn(t, srv.ClientURL())
		ensure(t, js, events.DefaultStreamConfig())
		c := events.DefaultStreamConfig()
		c.MaxAge, c.MaxBytes = time.Hour, 1<<20
		st := ensure(t, js, c)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.MaxAge != time.Hour || info.Config.MaxBytes != 1<<20 || info.Config.Duplicates != 2*time.Minute {
			t.Fatalf("limits not updated: %+v", info.Config)
		}
	})
}

func TestStreamConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*events.StreamConfig)
	}{
		{"max age", func(c *events.StreamConfig) { c.MaxAge = time.Millisecond }},
		{"max bytes", func(c *events.StreamConfig) { c.MaxBytes = 10 }},
		{"replicas", func(c *events.StreamConfig) { c.Replicas = 0 }},
		{"duplicates", func(c *events.StreamConfig) { c.Duplicates = -time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := events.DefaultStreamConfig()
			tt.mod(&c)
			if err := c.Validate(); !errors.Is(err, events.ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
		})
	}
	if err := events.DefaultStreamConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestReadFilters replays one hive's events, and the events since a time.
func TestReadFilters(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	ensure(t, js, events.DefaultStreamConfig())
	p := startPublisher(t, js, "q")
	p.OnEvent(hiveEvent(registry.Joined, "h1", 1))
	p.OnEvent(workerEvent(registry.Joined, "h1", "w1", 1))
	p.OnEvent(hiveEvent(registry.Joined, "h2", 2))
	p.OnEvent(workerEvent(registry.Joined, "h2", "w1", 2))
	p.OnEvent(hiveEvent(registry.Joined, "h10", 3))
	waitFor(t, 10*time.Second, func() error {
		if n := len(readAll(t, js, events.Query{})); n != 5 {
			return fmt.Errorf("%d events stored", n)
		}
		return nil
	})
	got := keysOf(readAll(t, js, events.Query{HiveID: "h1"}))
	if fmt.Sprint(got) != "[joined h1 joined h1.w1]" {
		t.Fatalf("hive h1: %v", got)
	}
	all := readAll(t, js, events.Query{})
	last := all[len(all)-1].Stored
	p.OnEvent(workerEvent(registry.Left, "h1", "w1", 9))
	waitFor(t, 10*time.Second, func() error {
		got := keysOf(readAll(t, js, events.Query{Since: last.Add(time.Nanosecond)}))
		if fmt.Sprint(got) != "[left h1.w1]" {
			return fmt.Errorf("since %s: %v", last, got)
		}
		return nil
	})
	if rs := readAll(t, js, events.Query{Since: time.Now().Add(time.Hour)}); len(rs) != 0 {
		t.Fatalf("future since: %v", keysOf(rs))
	}
	if err := events.Read(t.Context(), js, subjects.Default(), events.Query{HiveID: "a.b"}, func(events.Record) error { return nil }); !errors.Is(err, subjects.ErrInvalidID) {
		t.Fatalf("bad hive id: %v", err)
	}
}

// TestReadFollow replays, says when it caught up, then delivers new events.
func TestReadFollow(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	ensure(t, js, events.DefaultStreamConfig())
	p := startPublisher(t, js, "q")
	p.OnEvent(hiveEvent(registry.Joined, "h1", 1))
	waitFor(t, 10*time.Second, func() error {
		if s := p.Stats(); s.Published != 1 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	var (
		mu       sync.Mutex
		got      []string
		caughtAt = -1
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- events.Read(ctx, js, subjects.Default(), events.Query{Follow: true, CaughtUp: func() {
			mu.Lock()
			caughtAt = len(got)
			mu.Unlock()
		}}, func(r events.Record) error {
			mu.Lock()
			got = append(got, r.Event.Event+" "+r.Event.Key)
			mu.Unlock()
			return nil
		})
	}()
	state := func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("%v caught up after %d", got, caughtAt)
	}
	waitFor(t, 10*time.Second, func() error {
		if s := state(); s != "[joined h1] caught up after 1" {
			return fmt.Errorf("history: %s", s)
		}
		return nil
	})
	p.OnEvent(hiveEvent(registry.Left, "h1", 2))
	waitFor(t, 10*time.Second, func() error {
		if s := state(); s != "[joined h1 left h1] caught up after 1" {
			return fmt.Errorf("follow: %s", s)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow ended with %v", err)
	}
}

func TestReadNoHistory(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	err := events.Read(t.Context(), js, subjects.Default(), events.Query{}, func(events.Record) error { return nil })
	if !errors.Is(err, events.ErrNoHistory) {
		t.Fatalf("Read = %v, want ErrNoHistory", err)
	}
	ensure(t, js, events.DefaultStreamConfig())
	caught := false
	err = events.Read(t.Context(), js, subjects.Default(), events.Query{CaughtUp: func() { caught = true }}, func(events.Record) error { return nil })
	if err != nil || !caught {
		t.Fatalf("empty history: err %v, caught up %v", err, caught)
	}
}

func TestDecodeRefusesGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("x"), {0x92, 0x01, 0x02}, {0xdf, 0xff, 0xff, 0xff, 0xff}} {
		if _, err := events.Decode(b); !errors.Is(err, events.ErrUndecodable) {
			t.Fatalf("Decode(%x) = %v, want ErrUndecodable", b, err)
		}
	}
}

func TestMessageRefusesBadTokens(t *testing.T) {
	ev := workerEvent(registry.Joined, "h1", "w.1", 1)
	if _, err := events.Message(subjects.Default(), "q", ev); err == nil {
		t.Fatal("a worker id with a dot made a subject")
	}
}

// TestPublisherLifecycle holds the lifecycle contract under -race.
func TestPublisherLifecycle(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	ensure(t, js, events.DefaultStreamConfig())
	newP := func() *events.Publisher {
		p, err := events.NewPublisher(js, events.DefaultConfig("q"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := newP()
	p.Stop(context.Background()) // before Start
	if err := p.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("Start after Stop = %v", err)
	}
	p = newP()
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("second Start = %v", err)
	}
	p.Stop(context.Background())
	p.Stop(context.Background())

	for range 20 {
		p := newP()
		var wg sync.WaitGroup
		wg.Add(3)
		go func() { defer wg.Done(); _ = p.Start(context.Background()) }()
		go func() { defer wg.Done(); p.Stop(context.Background()) }()
		go func() { defer wg.Done(); p.OnEvent(hiveEvent(registry.Joined, "h", 1)); _ = p.Stats() }()
		wg.Wait()
		p.Stop(context.Background())
	}
}

// TestPublisherDropsWhenFull counts what a full buffer refuses, without blocking.
func TestPublisherDropsWhenFull(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	c := events.DefaultConfig("q")
	c.Buffer = 2
	p, err := events.NewPublisher(js, c)
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(5) {
		p.OnEvent(hiveEvent(registry.Joined, "h", i)) // not started: nothing drains
	}
	if s := p.Stats(); s.Dropped != 3 {
		t.Fatalf("stats %+v, want 3 dropped", s)
	}
}

// TestPublisherSkipsQueenEventsAndRefreshes keeps the history to workers
// and hives, and to changes.
func TestPublisherSkipsQueenEventsAndRefreshes(t *testing.T) {
	srv := testutil.Server(t)
	c := events.DefaultConfig("q")
	c.Buffer = 1
	p, err := events.NewPublisher(jsOn(t, srv.ClientURL()), c)
	if err != nil {
		t.Fatal(err)
	}
	p.OnEvent(registry.Event{Type: registry.Joined, Kind: subjects.KindQueen, Key: "q1", QueenID: "q1"})
	p.OnEvent(workerEvent(registry.Refreshed, "h1", "w1", 2))
	p.OnEvent(workerEvent(registry.Joined, "h1", "w1", 3))
	p.OnEvent(workerEvent(registry.Left, "h1", "w1", 4))
	if s := p.Stats(); s.Dropped != 1 {
		t.Fatalf("stats %+v: want only the second worker event refused by the full buffer", s)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1GiB", 1 << 30, true}, {"512MiB", 512 << 20, true}, {"4KiB", 4096, true}, {"2TiB", 2 << 40, true},
		{"500MB", 500e6, true}, {"1GB", 1e9, true}, {"1048576", 1 << 20, true}, {"10B", 10, true}, {" 3 GiB ", 3 << 30, true},
		{"", 0, false}, {"1.5GiB", 0, false}, {"-1GiB", 0, false}, {"lots", 0, false}, {"1PiB", 0, false}, {"99999999999TiB", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := events.ParseSize(tt.in)
			if tt.ok && (err != nil || got != tt.want) {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
			if !tt.ok && !errors.Is(err, events.ErrInvalidConfig) {
				t.Fatalf("ParseSize(%q) = %d, %v; want ErrInvalidConfig", tt.in, got, err)
			}
		})
	}
}

func TestCollector(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	ensure(t, js, events.DefaultStreamConfig())
	p := startPublisher(t, js, "q")
	p.OnEvent(hiveEvent(registry.Joined, "h1", 1))
	p.OnEvent(hiveEvent(registry.Joined, "h1", 1))
	waitFor(t, 10*time.Second, func() error {
		if s := p.Stats(); s.Published != 1 || s.Duplicates != 1 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.Collector())
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, m := range fams[0].GetMetric() {
		got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
	}
	if fams[0].GetName() != "rbee_events_total" || got["published"] != 1 || got["duplicate"] != 1 || got["dropped"] != 0 || got["failed"] != 0 {
		t.Fatalf("%s %v", fams[0].GetName(), got)
	}
}

// TestPublisherBurstInOrder hands over a burst of joins far larger than the
// window and stops at once: Stop stores every one, in the order handed over.
func TestPublisherBurstInOrder(t *testing.T) {
	srv := testutil.Server(t)
	js := jsOn(t, srv.ClientURL())
	st := ensure(t, js, events.DefaultStreamConfig())
	p := startPublisher(t, js, "q")
	const n = 3000
	for i := range uint64(n) {
		p.OnEvent(workerEvent(registry.Joined, "h", fmt.Sprintf("w%d", i), i+1))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.Stop(ctx)
	if s := p.Stats(); s.Published != n || s.Failed != 0 || s.Dropped != 0 {
		t.Fatalf("stats %+v, want %d published", s, n)
	}
	if got := streamMsgs(t, st); got != n {
		t.Fatalf("stream holds %d events, want %d", got, n)
	}
	for i, r := range readAll(t, js, events.Query{}) {
		if r.Event.Revision != uint64(i+1) {
			t.Fatalf("event %d of the stream is revision %d: out of order", i+1, r.Event.Revision)
		}
	}
}

// BenchmarkPublisher measures how many events a publisher stores per second
// (an embedded server on loopback).
func BenchmarkPublisher(b *testing.B) {
	srv := testutil.Server(b)
	js := jsOn(b, srv.ClientURL())
	st := ensure(b, js, events.DefaultStreamConfig())
	c := events.DefaultConfig("q")
	c.Buffer = b.N + 1
	p, err := events.NewPublisher(js, c)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	if err := p.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	for i := range uint64(b.N) {
		p.OnEvent(workerEvent(registry.Joined, "h", fmt.Sprintf("w%d", i), i+1))
	}
	p.Stop(context.Background())
	b.StopTimer()
	if s := p.Stats(); s.Published != uint64(b.N) {
		b.Fatalf("stats %+v, want %d published", s, b.N)
	}
	b.ReportMetric(float64(streamMsgs(b, st))/b.Elapsed().Seconds(), "events/s")
}
