package queen

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
)

// checkFor polls f until it returns nil, failing with its last error at the
// deadline (testutil.CheckFor).
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, 20*time.Millisecond, f)
}

func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.Logger = testutil.Logger(t)
	cfg.Interval = time.Second
	cfg.MaxTTL = time.Minute
	cfg.Advisories = false
	return cfg
}

func startTestQueen(t *testing.T, url string, cfg Config) *Queen {
	t.Helper()
	q, err := New(testutil.Connect(t, url), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	return q
}

func startTestWorker(t *testing.T, nc *nats.Conn, hive, id string, interval time.Duration) *publisher.Publisher[*wire.Worker] {
	t.Helper()
	s := subjects.Default()
	pc := publisher.DefaultConfig(s.Worker(hive, id), wire.SchemaWorker)
	pc.Interval = interval
	w := &wire.Worker{HiveID: hive, WorkerID: id, Status: wire.StatusReady, Meta: wire.Meta{Health: wire.Healthy}, SlotsTotal: 1}
	p, err := publisher.New(nc, pc, func() *wire.Worker { c := *w; return &c })
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abandon)
	return p
}

// lastMsg returns the raw stored message of a worker key.
func lastMsg(js jetstream.JetStream, bucket, key string) (*jetstream.RawStreamMsg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, err
	}
	return st.GetLastMsgForSubject(ctx, "$KV."+bucket+"."+key)
}

// TestPerEntryTTL: each write carries missed × the beat's own interval as
// Nats-TTL, so workers at 1 s and 2 s live 3 s and 6 s in one bucket; a beat
// whose TTL would pass the ceiling is refused with reason interval.
func TestPerEntryTTL(t *testing.T) {
	srv := testutil.Server(t)
	q := startTestQueen(t, srv.ClientURL(), testConfig(t))
	nc := testutil.Connect(t, srv.ClientURL())
	startTestWorker(t, nc, "h", "fast", time.Second)
	startTestWorker(t, nc, "h", "slow", 2*time.Second)
	startTestWorker(t, nc, "h", "glacial", 30*time.Second) // 90 s > the 60 s ceiling
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"h.fast": "3s", "h.slow": "6s"} {
		checkFor(t, 10*time.Second, func() error {
			m, err := lastMsg(js, "rbee_workers", key)
			if err != nil {
				return err
			}
			if got := m.Header.Get("Nats-TTL"); got != want {
				return fmt.Errorf("%s: Nats-TTL %q, want %q", key, got, want)
			}
			return nil
		})
	}
	checkFor(t, 10*time.Second, func() error {
		if n := q.Stats().Rejected[subscriber.ReasonInterval]; n == 0 {
			return errors.New("no beat rejected for its interval")
		}
		if _, err := lastMsg(js, "rbee_workers", "h.glacial"); err == nil {
			return errors.New("a refused beat reached the registry")
		}
		return nil
	})
}

// TestMigrateOldBucket: a bucket of the older scheme (one TTL as its age
// limit) is migrated in place: its age limit becomes the ceiling and every
// entry keeps the expiry it had, so none is lost and none lives on forever.
func TestMigrateOldBucket(t *testing.T) {
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	old, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "rbee_workers", History: 1, TTL: 20 * time.Second,
		LimitMarkerTTL: 20 * time.Second, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	entry, _ := wire.Marshal(&wire.WorkerEntry{Worker: wire.Worker{HiveID: "h", WorkerID: "old", Status: wire.StatusReady,
		Meta: wire.Meta{V: 1, InstanceID: "i", Seq: 1, IntervalMs: 5000, Health: wire.Healthy}}})
	if _, err := old.Put(ctx, "h.old", entry); err != nil {
		t.Fatal(err)
	}
	// A live worker beats through the migration: its entry, written by the
	// old queen, must never expire.
	if _, err := old.Put(ctx, "h.live", entry); err != nil {
		t.Fatal(err)
	}
	startTestWorker(t, nc, "h", "live", time.Second)
	var mu sync.Mutex
	var expired []string
	cfg := testConfig(t)
	cfg.OnEvent = func(ev registry.Event) {
		if ev.Type == registry.Expired {
			mu.Lock()
			expired = append(expired, ev.Key)
			mu.Unlock()
		}
	}
	q := startTestQueen(t, srv.ClientURL(), cfg)
	kv, err := js.KeyValue(ctx, "rbee_workers")
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != time.Minute {
		t.Fatalf("age limit %s after migration, want the 1m ceiling", st.TTL())
	}
	m, err := lastMsg(js, "rbee_workers", "h.old")
	if err != nil {
		t.Fatalf("entry lost in the migration: %v", err)
	}
	ttl, err := time.ParseDuration(m.Header.Get("Nats-TTL"))
	if err != nil || ttl <= 0 || ttl > 20*time.Second {
		t.Fatalf("migrated entry has Nats-TTL %q, want what was left of its 20s", m.Header.Get("Nats-TTL"))
	}
	// Over more than three of its intervals the live worker keeps its entry.
	seq := uint64(0)
	checkFor(t, 15*time.Second, func() error {
		e, _, ok := q.Registry().Worker("h.live")
		if !ok {
			return errors.New("h.live missing from the registry")
		}
		if seq == 0 {
			seq = e.Seq
		}
		if e.Seq < seq+4 {
			return fmt.Errorf("h.live at seq %d, waiting for %d", e.Seq, seq+4)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for _, k := range expired {
		if k == "h.live" {
			t.Fatal("the live worker expired during the migration")
		}
	}
}

// TestQueenBeats: the queen beats on rbee.hb.queen.<id> and its entry in
// rbee_queens says ok.
func TestQueenBeats(t *testing.T) {
	srv := testutil.Server(t)
	cfg := testConfig(t)
	cfg.QueenID = "q-test"
	q := startTestQueen(t, srv.ClientURL(), cfg)
	checkFor(t, 10*time.Second, func() error {
		qs := q.Registry().Queens()
		if len(qs) != 1 || qs[0].QueenID != "q-test" || qs[0].State != wire.QueenOK {
			return fmt.Errorf("queens = %+v, want q-test ok", qs)
		}
		return q.Health()
	})
}

// TestStoreFailedDegrades: a failed store write the broker reports makes the
// queen degraded at once, in its beat and Health, before any write of its
// goes unanswered, and brings Repair; it is ok again once repaired.
func TestStoreFailedDegrades(t *testing.T) {
	srv := testutil.Server(t)
	var failed, fixable atomic.Bool
	var repairs atomic.Int32
	cfg := testConfig(t)
	cfg.QueenID = "q-test"
	cfg.StoreFailed = failed.Load
	cfg.Repair = func(context.Context) error {
		repairs.Add(1)
		if fixable.Load() {
			failed.Store(false)
		}
		return nil
	}
	q := startTestQueen(t, srv.ClientURL(), cfg)
	state := func(want wire.QueenState, reason string) {
		t.Helper()
		checkFor(t, 10*time.Second, func() error {
			qs := q.Registry().Queens()
			if len(qs) != 1 || qs[0].State != want || !strings.Contains(qs[0].Reason, reason) {
				return fmt.Errorf("queens = %+v, want q-test %s (%q); repairs %d", qs, want, reason, repairs.Load())
			}
			return nil
		})
	}
	state(wire.QueenOK, "")
	failed.Store(true)
	state(wire.QueenDegraded, "the broker reported a failed store write")
	if err := q.Health(); err == nil {
		t.Error("Health is nil while the broker reports a failed store write")
	}
	checkFor(t, 10*time.Second, func() error {
		if repairs.Load() == 0 {
			return errors.New("Repair not called while the broker reports a failed store write")
		}
		return nil
	})
	fixable.Store(true)
	state(wire.QueenOK, "") // repaired
}

// TestGoodbyeAndExpiry: a goodbye deletes at once (left), silence expires the
// entry by its own TTL (expired).
func TestGoodbyeAndExpiry(t *testing.T) {
	srv := testutil.Server(t)
	var mu sync.Mutex
	seen := map[string]registry.EventType{}
	cfg := testConfig(t)
	cfg.OnEvent = func(ev registry.Event) {
		mu.Lock()
		seen[ev.Key+" "+string(ev.Type)] = ev.Type
		mu.Unlock()
	}
	startTestQueen(t, srv.ClientURL(), cfg)
	nc := testutil.Connect(t, srv.ClientURL())
	bye := startTestWorker(t, nc, "h", "bye", time.Second)
	crash := startTestWorker(t, nc, "h", "crash", time.Second)
	has := func(k string) error {
		mu.Lock()
		defer mu.Unlock()
		if _, ok := seen[k]; !ok {
			return fmt.Errorf("no %q event yet; seen %v", k, seen)
		}
		return nil
	}
	checkFor(t, 10*time.Second, func() error { return errors.Join(has("h.bye joined"), has("h.crash joined")) })
	if err := bye.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	crash.Abandon()
	checkFor(t, 10*time.Second, func() error { return has("h.bye left") })
	checkFor(t, 10*time.Second, func() error { return has("h.crash expired") })
	if has("h.bye expired") == nil || has("h.crash left") == nil {
		t.Fatalf("a goodbye expired or a crash left: %v", seen)
	}
}

// TestLifecycle: a second Start and a Start after Stop return ErrStarted;
// Stop before Start and twice are safe; accessors may run during Start.
func TestLifecycle(t *testing.T) {
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	q, err := New(nc, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				_ = q.Stats()
				_ = q.Registry()
				_ = q.Health()
				_ = q.Status()
			}
		}
	}()
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start = %v, want ErrStarted", err)
	}
	close(stop)
	wg.Wait()
	q.Stop(t.Context())
	q.Stop(t.Context())
	if err := q.Start(t.Context()); !errors.Is(err, ErrStarted) {
		t.Fatalf("Start after Stop = %v, want ErrStarted", err)
	}
	q2, _ := New(nc, testConfig(t))
	q2.Stop(t.Context()) // before Start
	// Stop racing Start.
	q3, _ := New(nc, testConfig(t))
	done := make(chan struct{})
	go func() { defer close(done); _ = q3.Start(t.Context()) }()
	q3.Stop(t.Context())
	<-done
	q3.Stop(t.Context())
}

// TestStartEndsWithContext: the queen stops when Start's context ends.
func TestStartEndsWithContext(t *testing.T) {
	srv := testutil.Server(t)
	q, err := New(testutil.Connect(t, srv.ClientURL()), testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	checkFor(t, 10*time.Second, func() error {
		if err := q.Health(); !errors.Is(err, ErrNotOK) {
			return fmt.Errorf("health %v after the context ended, want stopped", err)
		}
		return nil
	})
}

// TestReplicasOnOneServer: --replicas 2 on a server that is not clustered is
// refused in one line that says what is wrong.
func TestReplicasOnOneServer(t *testing.T) {
	srv := testutil.Server(t)
	cfg := testConfig(t)
	cfg.Replicas = 2
	q, err := New(testutil.Connect(t, srv.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = q.Start(t.Context())
	if err == nil || !strings.Contains(err.Error(), "--replicas 2 needs a JetStream cluster") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Start with 2 replicas on one server: %v", err)
	}
}

// startListedQueen starts queen id on a server of its own and returns it,
// once its entry is in the queens bucket, with a JetStream context.
func startListedQueen(t *testing.T, id string) (*Queen, jetstream.JetStream) {
	t.Helper()
	srv := testutil.Server(t)
	cfg := testConfig(t)
	cfg.QueenID = id
	q, err := New(testutil.Connect(t, srv.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Stop(context.Background()) })
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		_, err := lastMsg(js, "rbee_queens", id)
		return err
	})
	return q, js
}

// TestQueenLeaves: a queen that stops cleanly deletes its own entry in the
// queens bucket, so the registry shows it left (a delete marker), not
// expired, even as the only queen, with no one to write its goodbye beat.
func TestQueenLeaves(t *testing.T) {
	q, js := startListedQueen(t, "q-leaves")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q.Stop(ctx)
	m, err := lastMsg(js, "rbee_queens", "q-leaves")
	if err != nil {
		t.Fatal(err)
	}
	if op, inst := m.Header.Get("KV-Operation"), m.Header.Get(HeaderInstance); op != "DEL" || inst == "" {
		t.Fatalf("the stopped queen's last entry: KV-Operation %q, instance %q; want a DEL naming the instance that left; headers %v",
			op, inst, m.Header)
	}
}

// TestQueenLeaveNamesInstance: a queen's own delete of its entry (the path
// taken when no queen writes its goodbye beat) is conditional and names the
// instance that left, so another queen's reserve cannot write an older beat
// of it back.
func TestQueenLeaveNamesInstance(t *testing.T) {
	q, js := startListedQueen(t, "q-leave")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q.leave(ctx)
	m, err := lastMsg(js, "rbee_queens", "q-leave")
	if err != nil {
		t.Fatal(err)
	}
	if op, inst := m.Header.Get("KV-Operation"), m.Header.Get(HeaderInstance); op != "DEL" || inst != q.self.InstanceID() ||
		m.Header.Get(jetstream.ExpectedLastSubjSeqHeader) == "" {
		t.Fatalf("leave wrote %v; want a conditional DEL naming instance %s", m.Header, q.self.InstanceID())
	}
}

// TestStableQueenID: the default ID of a queen with a data directory is the
// same at every start and differs between directories.
func TestStableQueenID(t *testing.T) {
	a, b := StableQueenID("/var/lib/rbee"), StableQueenID("/srv/rbee")
	if a != StableQueenID("/var/lib/rbee") || a == b {
		t.Fatalf("ids %q, %q", a, b)
	}
	if err := subjects.ValidateID("queen id", a); err != nil {
		t.Fatal(err)
	}
}

// gaugeOf returns the value of the queen's unlabelled gauge name.
func gaugeOf(t *testing.T, q *Queen, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(q.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// TestBeatsBuffered: beats that arrive while the queen cannot decode them
// show in rbee_queen_beats_buffered, and leave it once decoded.
func TestBeatsBuffered(t *testing.T) {
	srv := testutil.Server(t)
	q := startTestQueen(t, srv.ClientURL(), testConfig(t))
	nc := testutil.Connect(t, srv.ClientURL())
	s := subjects.Default()
	const n = 50
	q.w.mu.Lock() // decoding a beat takes the writer's lock: the first waits, the rest queue behind it
	locked := true
	defer func() {
		if locked {
			q.w.mu.Unlock()
		}
	}()
	for i := range n {
		id := fmt.Sprintf("w%d", i)
		w := &wire.Worker{HiveID: "h", WorkerID: id, Status: wire.StatusReady, Meta: wire.Meta{Health: wire.Healthy}, SlotsTotal: 1}
		w.Stamp("inst-"+id, 1, time.Now().UnixMilli(), 1000)
		data, err := wire.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		msg := &nats.Msg{Subject: s.Worker("h", id), Data: data, Header: nats.Header{}}
		msg.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
		msg.Header.Set(wire.HeaderSchema, wire.SchemaWorker)
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		// The queen's own beats come through the same subscription. The
		// collector takes the writer's lock: the figure is read as it does.
		if v := q.buffered(); v < n-1 {
			return fmt.Errorf("rbee_queen_beats_buffered = %v, want at least %d (one beat waits for the lock)", v, n-1)
		}
		return nil
	})
	q.w.mu.Unlock()
	locked = false
	checkFor(t, 5*time.Second, func() error {
		if v := gaugeOf(t, q, "rbee_queen_beats_buffered"); v != 0 {
			return fmt.Errorf("rbee_queen_beats_buffered = %v after the lock was released, want 0", v)
		}
		return nil
	})
}
