package fleet_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rbee/heartbeat/fleet"
	"github.com/rbee/heartbeat/wire"
)

// source is a fixed registry content.
type source struct {
	workers []*wire.WorkerEntry
	hives   []*wire.HiveEntry
	queens  []*wire.QueenEntry
}

func (s *source) Workers() []*wire.WorkerEntry { return s.workers }
func (s *source) Hives() []*wire.HiveEntry     { return s.hives }
func (s *source) Queens() []*wire.QueenEntry   { return s.queens }

func worker(hive, id, model string, st wire.Status, l wire.Liveness, h wire.Health) *wire.WorkerEntry {
	w := &wire.WorkerEntry{}
	w.HiveID, w.WorkerID, w.ModelID, w.Status, w.Liveness, w.Health = hive, id, model, st, l, h
	return w
}

func ptr[T any](v T) *T { return &v }

func newCollector(t *testing.T, s fleet.Source, cfg fleet.Config) *fleet.Collector {
	t.Helper()
	c, err := fleet.New(func() fleet.Source { return s }, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCollectorFleet(t *testing.T) {
	h := &wire.HiveEntry{}
	h.HiveID, h.CPUPercent, h.RAMUsedBytes, h.RAMTotalBytes, h.Health = "gpu-1", 12.5, 1<<30, 4<<30, wire.Degraded
	h.StatsStale, h.StatsAgeMs = true, 45000
	h.GPUs = []wire.GPU{
		{Index: 0, UUID: "GPU-a", Name: "H100", VRAMUsedBytes: ptr[uint64](1000), VRAMTotalBytes: ptr[uint64](8000),
			UtilPercent: ptr(50.0), TemperatureC: ptr(61.0), PowerW: ptr(300.0)},
		{Index: 1, UUID: "GPU-b", Name: "H100", Health: wire.Degraded, Xid: ptr(79), XidAtMs: 1_700_000_000_000,
			RecoveryAction: "gpu_reset"},
	}
	q := &wire.QueenEntry{}
	q.QueenID, q.State = "q1", wire.QueenDisrupted
	src := &source{
		workers: []*wire.WorkerEntry{
			worker("gpu-1", "w1", "llama", wire.StatusReady, "", wire.Healthy),
			worker("gpu-1", "w2", "llama", wire.StatusReady, wire.LivenessAlive, wire.Healthy),
			worker("gpu-1", "w3", "llama", wire.StatusBusy, wire.LivenessStalled, wire.Healthy),
			worker("gpu-1", "w4", "qwen", wire.StatusBusy, "", wire.Unhealthy),
			worker("gpu-1", "w5", "qwen", wire.StatusStarting, "", wire.Healthy),
		},
		hives:  []*wire.HiveEntry{h},
		queens: []*wire.QueenEntry{q},
	}
	c := newCollector(t, src, fleet.DefaultConfig("1.2.3"))
	want := `
# HELP rbee_workers Worker entries in the registry by hive, model, status and liveness.
# TYPE rbee_workers gauge
rbee_workers{hive="gpu-1",liveness="alive",model="llama",status="ready"} 2
rbee_workers{hive="gpu-1",liveness="stalled",model="llama",status="busy"} 1
rbee_workers{hive="gpu-1",liveness="alive",model="qwen",status="busy"} 1
rbee_workers{hive="gpu-1",liveness="alive",model="qwen",status="starting"} 1
# HELP rbee_model_workers Workers of each model by state: ready or busy (alive, not unhealthy), problem (not alive or unhealthy), other (starting, draining, stopping, stopped). Every state of every model in the registry is exported, zeros included.
# TYPE rbee_model_workers gauge
rbee_model_workers{model="llama",state="busy"} 0
rbee_model_workers{model="llama",state="other"} 0
rbee_model_workers{model="llama",state="problem"} 1
rbee_model_workers{model="llama",state="ready"} 2
rbee_model_workers{model="qwen",state="busy"} 0
rbee_model_workers{model="qwen",state="other"} 1
rbee_model_workers{model="qwen",state="problem"} 1
rbee_model_workers{model="qwen",state="ready"} 0
# HELP rbee_gpu_vram_used_bytes GPU memory in use.
# TYPE rbee_gpu_vram_used_bytes gauge
rbee_gpu_vram_used_bytes{gpu="0",hive="gpu-1"} 1000
# HELP rbee_gpu_health 1 for the GPU's health (healthy when the hive reports none).
# TYPE rbee_gpu_health gauge
rbee_gpu_health{gpu="0",health="healthy",hive="gpu-1"} 1
rbee_gpu_health{gpu="1",health="degraded",hive="gpu-1"} 1
# HELP rbee_gpu_last_xid The last NVIDIA Xid error of the GPU; absent when none was seen.
# TYPE rbee_gpu_last_xid gauge
rbee_gpu_last_xid{gpu="1",hive="gpu-1"} 79
# HELP rbee_gpu_last_xid_timestamp_seconds When the last Xid was seen (hive clock).
# TYPE rbee_gpu_last_xid_timestamp_seconds gauge
rbee_gpu_last_xid_timestamp_seconds{gpu="1",hive="gpu-1"} 1.7e+09
# HELP rbee_gpu_recovery_action 1 for the driver's recommended recovery action (none, gpu_reset, node_reboot, drain_p2p, drain_and_reset).
# TYPE rbee_gpu_recovery_action gauge
rbee_gpu_recovery_action{action="gpu_reset",gpu="1",hive="gpu-1"} 1
rbee_gpu_recovery_action{action="none",gpu="0",hive="gpu-1"} 1
# HELP rbee_hive_cpu_percent The hive machine's CPU use, percent of all cores.
# TYPE rbee_hive_cpu_percent gauge
rbee_hive_cpu_percent{hive="gpu-1"} 12.5
# HELP rbee_hive_ram_used_bytes The hive machine's RAM in use.
# TYPE rbee_hive_ram_used_bytes gauge
rbee_hive_ram_used_bytes{hive="gpu-1"} 1.073741824e+09
# HELP rbee_hive_stats_stale 1 when the hive's last beat reused an old system or GPU sample (the sampler could not refresh in time).
# TYPE rbee_hive_stats_stale gauge
rbee_hive_stats_stale{hive="gpu-1"} 1
# HELP rbee_hive_stats_age_seconds Age of the hive's stats sample when it was sent.
# TYPE rbee_hive_stats_age_seconds gauge
rbee_hive_stats_age_seconds{hive="gpu-1"} 45
# HELP rbee_hive_health 1 for the hive's own health judgement.
# TYPE rbee_hive_health gauge
rbee_hive_health{health="degraded",hive="gpu-1"} 1
# HELP rbee_queen_peers 1 for each queen in the queens bucket and its state (ok, degraded, disrupted); an expired queen is gone.
# TYPE rbee_queen_peers gauge
rbee_queen_peers{queen="q1",state="disrupted"} 1
# HELP rbee_fleet_series_cut Label sets left out of this scrape because a family passed its cap (docs/metrics.md, Cardinality).
# TYPE rbee_fleet_series_cut gauge
rbee_fleet_series_cut{family="gpu"} 0
rbee_fleet_series_cut{family="hive"} 0
rbee_fleet_series_cut{family="model"} 0
rbee_fleet_series_cut{family="queen"} 0
rbee_fleet_series_cut{family="workers"} 0
`
	names := []string{"rbee_workers", "rbee_model_workers", "rbee_gpu_vram_used_bytes", "rbee_gpu_health", "rbee_gpu_last_xid",
		"rbee_gpu_last_xid_timestamp_seconds", "rbee_gpu_recovery_action", "rbee_hive_cpu_percent", "rbee_hive_ram_used_bytes",
		"rbee_hive_stats_stale", "rbee_hive_stats_age_seconds", "rbee_hive_health", "rbee_queen_peers", "rbee_fleet_series_cut"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// A measurement the GPU did not report is absent, never a zero.
	if n := testutil.CollectAndCount(c, "rbee_gpu_temperature_celsius"); n != 1 {
		t.Errorf("rbee_gpu_temperature_celsius: %d series, want 1 (GPU 1 reports none)", n)
	}
	if n := testutil.CollectAndCount(c, "rbee_build_info"); n != 1 {
		t.Errorf("rbee_build_info: %d series, want 1", n)
	}
}

func TestCollectorNoRegistry(t *testing.T) {
	c, err := fleet.New(func() fleet.Source { return nil }, fleet.DefaultConfig("x"))
	if err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c); n != 1+5 {
		t.Errorf("no registry: %d series, want build info and 5 cut counts", n)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(""), "rbee_workers"); err != nil {
		t.Error(err)
	}
}

// TestCollectorCaps fills every family past its cap: the series stay within
// Config.MaxSeries and what is cut is counted.
func TestCollectorCaps(t *testing.T) {
	cfg := fleet.Config{Version: "x", MaxHives: 3, MaxGPUs: 4, MaxModels: 2, MaxWorkerSets: 5, MaxQueens: 1}
	src := &source{}
	for i := range 10 {
		h := &wire.HiveEntry{}
		h.HiveID = fmt.Sprintf("h%02d", i)
		h.GPUs = []wire.GPU{{Index: 0, VRAMUsedBytes: ptr[uint64](1), VRAMTotalBytes: ptr[uint64](2), UtilPercent: ptr(1.0),
			TemperatureC: ptr(1.0), PowerW: ptr(1.0), Xid: ptr(13), XidAtMs: 1}, {Index: 1}}
		src.hives = append(src.hives, h)
		src.workers = append(src.workers, worker(h.HiveID, "w", fmt.Sprintf("m%d", i), wire.StatusReady, "", wire.Healthy))
		q := &wire.QueenEntry{}
		q.QueenID, q.State = fmt.Sprintf("q%d", i), wire.QueenOK
		src.queens = append(src.queens, q)
	}
	c := newCollector(t, src, cfg)
	if n, most := testutil.CollectAndCount(c), cfg.MaxSeries(); n > most {
		t.Errorf("%d series, want at most %d", n, most)
	}
	want := `
# HELP rbee_fleet_series_cut Label sets left out of this scrape because a family passed its cap (docs/metrics.md, Cardinality).
# TYPE rbee_fleet_series_cut gauge
rbee_fleet_series_cut{family="gpu"} 2
rbee_fleet_series_cut{family="hive"} 7
rbee_fleet_series_cut{family="model"} 8
rbee_fleet_series_cut{family="queen"} 9
rbee_fleet_series_cut{family="workers"} 5
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "rbee_fleet_series_cut"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c, "rbee_gpu_info"); n != cfg.MaxGPUs {
		t.Errorf("rbee_gpu_info: %d series, want the cap %d", n, cfg.MaxGPUs)
	}
	if probs, err := testutil.CollectAndLint(c); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := fleet.DefaultConfig("x")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.MaxGPUs = 0
	if _, err := fleet.New(nil, cfg); !errors.Is(err, fleet.ErrInvalidConfig) {
		t.Errorf("MaxGPUs 0: %v, want ErrInvalidConfig", err)
	}
	if got := fleet.DefaultConfig("x").MaxSeries(); got != 70985 {
		t.Errorf("MaxSeries of the defaults = %d; docs/metrics.md states 70985", got)
	}
}

// TestCollectorConcurrent scrapes from several goroutines while the source
// changes (run with -race): Collect may be called concurrently.
func TestCollectorConcurrent(t *testing.T) {
	var mu sync.Mutex
	src := &lockedSource{mu: &mu, s: &source{}}
	c := newCollector(t, src, fleet.DefaultConfig("x"))
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				if _, err := reg.Gather(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i := range 200 {
		mu.Lock()
		src.s.workers = append(slices.Clone(src.s.workers), worker("h", fmt.Sprint(i), "m", wire.StatusReady, "", wire.Healthy))
		mu.Unlock()
	}
	wg.Wait()
}

type lockedSource struct {
	mu *sync.Mutex
	s  *source
}

func (l *lockedSource) Workers() []*wire.WorkerEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.s.workers
}
func (l *lockedSource) Hives() []*wire.HiveEntry   { return nil }
func (l *lockedSource) Queens() []*wire.QueenEntry { return nil }
