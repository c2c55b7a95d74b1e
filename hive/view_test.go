package hive

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
)

// beat hands the hive one worker beat, as its subscription would.
func beat(h *Hive, id string, intervalMs int64, seq uint64, pid int) {
	w := &wire.Worker{Meta: wire.Meta{Health: wire.Healthy}, HiveID: h.cfg.HiveID, WorkerID: id,
		Status: wire.StatusReady, Device: "cuda:0", PID: pid}
	w.Stamp("inst-"+id, seq, 0, intervalMs)
	h.onWorker(&subscriber.Heartbeat{Worker: w})
}

func newQuietHive(t *testing.T, cfg Config, clock *fakeClock) *Hive {
	t.Helper()
	srv := testutil.Server(t)
	cfg.Interval, cfg.Jitter = time.Hour, 0
	h, err := New(testutil.Connect(t, srv.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.now = clock.Now
	return h
}

// TestWorkerViewExpiresByEachWorkersInterval: each worker leaves the view
// after Missed of its own intervals, not one TTL for all.
func TestWorkerViewExpiresByEachWorkersInterval(t *testing.T) {
	clock := &fakeClock{}
	clock.Set(time.Now())
	h := newQuietHive(t, DefaultConfig("h1"), clock)
	beat(h, "fast", 1000, 1, 0)
	beat(h, "slow", 2000, 1, 0)
	steps := []struct {
		at   time.Duration
		want []string
	}{
		{3 * time.Second, []string{"fast", "slow"}},
		{3*time.Second + time.Millisecond, []string{"slow"}},
		{6 * time.Second, []string{"slow"}},
		{6*time.Second + time.Millisecond, []string{}},
	}
	start := clock.Now()
	for _, s := range steps {
		clock.Set(start.Add(s.at))
		if got := workerIDs(h.Workers()); !slices.Equal(got, s.want) {
			t.Fatalf("view at %s: %v, want %v", s.at, got, s.want)
		}
	}
}

// TestWorkerViewCarriesVRAM: the hive matches each worker's pid against the
// GPU processes and puts that memory and those GPUs into its view.
func TestWorkerViewCarriesVRAM(t *testing.T) {
	clock := &fakeClock{}
	clock.Set(time.Now())
	used := uint64(6 << 30)
	cfg := DefaultConfig("h1")
	cfg.Processes = func() map[int]ProcessVRAM {
		return map[int]ProcessVRAM{
			4242: {UsedBytes: &used, GPUUUIDs: []string{"GPU-0", "GPU-1"}},
			7:    {GPUUUIDs: []string{"GPU-2"}},
		}
	}
	h := newQuietHive(t, cfg, clock)
	beat(h, "a", 1000, 1, 4242)
	beat(h, "b", 1000, 1, 7)
	beat(h, "c", 1000, 1, 99) // holds no GPU memory
	beat(h, "d", 1000, 1, 0)  // says no pid
	ws := h.Workers()
	want := []wire.HiveWorker{
		{WorkerID: "a", PID: 4242, VRAMUsedBytes: &used, GPUUUIDs: []string{"GPU-0", "GPU-1"}},
		{WorkerID: "b", PID: 7, GPUUUIDs: []string{"GPU-2"}},
		{WorkerID: "c", PID: 99},
		{WorkerID: "d"},
	}
	for i := range ws {
		ws[i].Status, ws[i].Health, ws[i].Device, ws[i].LastSeenMs = "", "", "", 0
	}
	if !reflect.DeepEqual(ws, want) {
		t.Fatalf("view %+v, want %+v", ws, want)
	}
}

// TestBeatPublishesAtOnce: with an hour-long interval only Beat can bring a
// second beat.
func TestBeatPublishesAtOnce(t *testing.T) {
	srv := testutil.Server(t)
	got := listen(t, srv.ClientURL(), "h-beat")
	cfg := DefaultConfig("h-beat")
	cfg.Interval, cfg.Jitter = time.Hour, 0
	h := startHive(t, srv.ClientURL(), cfg, nil)
	testutil.Eventually(t, 10*time.Second, func() bool { return got.last() != nil }, "no first beat")
	h.Beat()
	testutil.Eventually(t, 10*time.Second, func() bool { return got.first(1, func(*wire.Hive) bool { return true }) != nil },
		"Beat sent nothing: %s", latest{got})
}

func TestConfigMissed(t *testing.T) {
	c := DefaultConfig("h1")
	c.Missed = 0
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("missed 0: %v", err)
	}
	c.WorkerTTL = time.Minute
	if err := c.Validate(); err != nil {
		t.Fatalf("a fixed TTL needs no missed: %v", err)
	}
	c.WorkerTTL = -time.Second
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative TTL: %v", err)
	}
}
