package hive

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/hoststats"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// beats records the hive beats published on one subject, decoded.
type beats struct {
	mu  sync.Mutex
	all []*wire.Hive
	bad int
}

// listen subscribes to hiveID's beats on a connection of its own.
func listen(t *testing.T, url, hiveID string) *beats {
	t.Helper()
	b := &beats{}
	nc := testutil.Connect(t, url)
	s, _ := subjects.New(subjects.DefaultPrefix)
	_, err := nc.Subscribe(s.Hive(hiveID), func(m *nats.Msg) {
		h, err := wire.DecodeHive(m.Data)
		b.mu.Lock()
		defer b.mu.Unlock()
		if err != nil {
			b.bad++
			return
		}
		b.all = append(b.all, h)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return b
}

// since returns the beats with seq > after, in arrival order.
func (b *beats) since(after uint64) []*wire.Hive {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*wire.Hive
	for _, h := range b.all {
		if h.Seq > after {
			out = append(out, h)
		}
	}
	return out
}

// first returns the first beat with seq > after that satisfies ok, or nil.
func (b *beats) first(after uint64, ok func(*wire.Hive) bool) *wire.Hive {
	for _, h := range b.since(after) {
		if ok(h) {
			return h
		}
	}
	return nil
}

// last returns the latest beat received, or nil.
func (b *beats) last() *wire.Hive {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.all) == 0 {
		return nil
	}
	return b.all[len(b.all)-1]
}

// latest formats the last beat received when a failure message is printed,
// not when the message's arguments are evaluated.
type latest struct{ b *beats }

func (l latest) String() string { return fmt.Sprintf("%+v", l.b.last()) }

// startHive starts a hive on its own connection; now, if not nil, is the
// clock of its view of its workers.
func startHive(t *testing.T, url string, cfg Config, now func() time.Time) *Hive {
	t.Helper()
	h, err := New(testutil.Connect(t, url), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if now != nil {
		h.now = now
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
	return h
}

// TestBeatsOnTimeWhileStatsHang wires a real hoststats.Sampler whose
// collection succeeds once and then hangs, ignoring its context, as a call
// stuck in a GPU driver would. The hive must keep beating, every beat
// carrying the last good sample marked stale. Were building a beat to wait
// for the collection, no beat would follow the hang and the stale beats
// would never arrive.
func TestBeatsOnTimeWhileStatsHang(t *testing.T) {
	srv := testutil.Server(t)
	url := srv.ClientURL()

	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // registered first, so it runs after the sampler's Stop
	var calls atomic.Int32
	temp := 48.5
	vramUsed, vramTotal := uint64(20<<30), uint64(80<<30)
	good := hoststats.Sample{
		CPUPercent:       37.5,
		RAMUsedBytes:     3 << 30,
		RAMTotalBytes:    16 << 30,
		HostTemperatureC: &temp,
		GPUs: []wire.GPU{{Index: 0, UUID: "GPU-test-0", Name: "Test GPU", VRAMUsedBytes: &vramUsed,
			VRAMTotalBytes: &vramTotal, Health: wire.Healthy}},
		Health: wire.Healthy,
	}
	collect := func(context.Context) (hoststats.Sample, error) {
		if calls.Add(1) == 1 {
			return good, nil
		}
		<-release // hangs past its timeout until the test ends
		return hoststats.Sample{}, errors.New("released")
	}
	smp, err := hoststats.NewSampler(hoststats.Config{Interval: 200 * time.Millisecond,
		Timeout: 50 * time.Millisecond, Logger: testutil.Logger(t)}, collect)
	if err != nil {
		t.Fatal(err)
	}
	if err := smp.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(smp.Stop)

	got := listen(t, url, "hive-stale")
	cfg := DefaultConfig("hive-stale")
	cfg.Interval, cfg.Jitter, cfg.Stats, cfg.Logger = 50*time.Millisecond, 0, smp.Fill, testutil.Logger(t)
	startHive(t, url, cfg, nil)

	carriesGood := func(h *wire.Hive) bool {
		return h.CPUPercent == good.CPUPercent && h.RAMUsedBytes == good.RAMUsedBytes &&
			h.RAMTotalBytes == good.RAMTotalBytes && h.HostTemperatureC != nil && *h.HostTemperatureC == temp &&
			len(h.GPUs) == 1 && h.GPUs[0].UUID == "GPU-test-0" && *h.GPUs[0].VRAMUsedBytes == vramUsed &&
			h.Health == wire.Healthy
	}

	// A fresh sample reaches a beat first.
	var fresh *wire.Hive
	testutil.Eventually(t, 10*time.Second, func() bool {
		fresh = got.first(0, func(h *wire.Hive) bool { return !h.StatsStale && carriesGood(h) })
		return fresh != nil
	}, "no beat carried the first sample fresh: last %s", latest{got})

	// Then the second collection hangs; once past its timeout, beats keep
	// going out with the last good sample, marked stale.
	testutil.Eventually(t, 10*time.Second, func() bool { return calls.Load() >= 2 }, "second collection never started")
	var stale *wire.Hive
	testutil.Eventually(t, 10*time.Second, func() bool {
		stale = got.first(fresh.Seq, func(h *wire.Hive) bool { return h.StatsStale })
		return stale != nil
	}, "no stale beat after the collection hung: last %s", latest{got})

	const more = 5
	testutil.Eventually(t, 10*time.Second, func() bool { return len(got.since(stale.Seq)) >= more },
		"the hive stopped beating while stats hung: beats after seq %d: last %s", stale.Seq, latest{got})
	after := append([]*wire.Hive{stale}, got.since(stale.Seq)...)
	for _, h := range after {
		if !h.StatsStale || !carriesGood(h) {
			t.Fatalf("beat seq %d while stats hang: stale=%v, want the last good sample marked stale: %+v", h.Seq, h.StatsStale, h)
		}
		if h.StatsAgeMs <= 0 {
			t.Fatalf("beat seq %d: stats_age_ms %d, want the sample's age", h.Seq, h.StatsAgeMs)
		}
	}
	seqs := make([]uint64, len(after))
	for i, h := range after {
		seqs[i] = h.Seq
	}
	if !slices.IsSorted(seqs) {
		t.Fatalf("beat seqs out of order: %v", seqs)
	}
	// Every one of those beats went out while the hung collection was still
	// running: the Sampler starts no second collection behind a hung one.
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d collections, want 2 (one good, one hung)", n)
	}
	got.mu.Lock()
	bad := got.bad
	got.mu.Unlock()
	if bad != 0 {
		t.Fatalf("%d undecodable hive beats", bad)
	}
	t.Logf("%d beats (seq %d..%d) went out stale while the collection hung", len(after), seqs[0], seqs[len(seqs)-1])
}

// fakeClock is a settable clock for the hive's view of its workers.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func workerIDs(ws []wire.HiveWorker) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.WorkerID
	}
	return out
}

// TestWorkerViewGoodbyeAndTTL pins down the hive's own view of its workers
// where the end-to-end test (integration.TestHiveView) cannot: with hour-long
// intervals, a joining worker and a goodbye can only reach the hive's beats
// through the beat they trigger at once, not through a periodic one; and
// with a settable clock, a silent worker stays in the view up to its TTL and
// is dropped just after it.
func TestWorkerViewGoodbyeAndTTL(t *testing.T) {
	const ttl = 90 * time.Second
	srv := testutil.Server(t)
	url := srv.ClientURL()
	clock := &fakeClock{}
	clock.Set(time.Now())

	got := listen(t, url, "hive-view")
	cfg := DefaultConfig("hive-view")
	cfg.Interval, cfg.Jitter, cfg.WorkerTTL, cfg.Logger = time.Hour, 0, ttl, testutil.Logger(t)
	h := startHive(t, url, cfg, clock.Now)

	wnc := testutil.Connect(t, url)
	start := func(hiveID, id string) *worker.Worker {
		wc := worker.DefaultConfig(hiveID, id)
		wc.Interval, wc.Jitter, wc.ModelID, wc.Device = time.Hour, 0, "model-"+id, "cuda:0"
		w, err := worker.New(wnc, wc)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Abandon)
		return w
	}
	start("hive-other", "w9") // another hive's worker must stay out of the view
	w0, w1 := start("hive-view", "w0"), start("hive-view", "w1")
	beatLists := func(want ...string) func() bool {
		return func() bool {
			b := got.last()
			return b != nil && slices.Equal(workerIDs(b.Workers), want)
		}
	}
	testutil.Eventually(t, 10*time.Second, beatLists("w0", "w1"), "joining workers not in the hive's beat: %s", latest{got})
	if b := got.last(); b.Workers[0].LastSeenMs != clock.Now().UnixMilli() || b.Workers[0].ModelID != "model-w0" {
		t.Fatalf("w0 in the view: %+v, want last_seen_ms from the hive's clock %d and its model", b.Workers[0], clock.Now().UnixMilli())
	}

	// A goodbye removes the worker, and the hive says so in a beat of its own.
	if err := w1.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, beatLists("w0"), "w1's goodbye did not reach the hive's beat: %s", latest{got})

	// w0 now stays silent (its next beat is an hour away): it is kept up to
	// its TTL on the hive's clock and dropped just past it.
	clock.Advance(ttl)
	if ws := workerIDs(h.Workers()); !slices.Equal(ws, []string{"w0"}) {
		t.Fatalf("view at exactly the TTL: %v, want [w0]", ws)
	}
	clock.Advance(time.Millisecond)
	if ws := h.Workers(); len(ws) != 0 {
		t.Fatalf("view just past the TTL: %v, want empty", workerIDs(ws))
	}
	// A beat from the dropped worker brings it back at once.
	before := got.last().Seq
	if err := w0.SetStatus(wire.StatusReady, wire.Healthy, ""); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return got.first(before, func(b *wire.Hive) bool {
			return len(b.Workers) == 1 && b.Workers[0].WorkerID == "w0" && b.Workers[0].Status == wire.StatusReady
		}) != nil
	}, "w0 not back in the hive's beat after beating again: %s", latest{got})
}
