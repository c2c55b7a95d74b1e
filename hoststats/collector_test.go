package hoststats

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"reflect"
	"runtime"
	"testing"

	"github.com/rbee/heartbeat/gpu"
	"github.com/rbee/heartbeat/wire"
	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/sensors"
)

// TestCollectOnThisMachine reads the real machine through the real GPU
// sampler. Without NVML (CI, development machines) GPUs must be empty but
// not nil.
func TestCollectOnThisMachine(t *testing.T) {
	g := gpu.New(nil)
	t.Cleanup(func() { _ = g.Close() })
	c := NewCollector(g, nil)

	for round := range 2 { // the second measures CPU since the first
		s, err := c.Collect(context.Background())
		if err != nil {
			t.Fatalf("round %d: Collect: %v", round, err)
		}
		if s.CPUPercent < 0 || s.CPUPercent > 100 || math.IsNaN(s.CPUPercent) {
			t.Errorf("CPUPercent = %v, want 0–100", s.CPUPercent)
		}
		if s.RAMTotalBytes == 0 || s.RAMUsedBytes > s.RAMTotalBytes {
			t.Errorf("RAM used %d of %d, want total > 0 and used ≤ total", s.RAMUsedBytes, s.RAMTotalBytes)
		}
		if s.GPUs == nil {
			t.Error("GPUs is nil, want a non-nil slice")
		}
		if s.HostTemperatureC != nil && (*s.HostTemperatureC <= 0 || *s.HostTemperatureC > 200) {
			t.Errorf("HostTemperatureC = %v, want a plausible reading or nil", *s.HostTemperatureC)
		}
		if s.Health == "" || s.TakenAt.IsZero() {
			t.Errorf("Health %q, TakenAt %v; want both set", s.Health, s.TakenAt)
		}
		t.Logf("cpu %.1f%% ram %d/%d temp %v gpus %d health %s %s",
			s.CPUPercent, s.RAMUsedBytes, s.RAMTotalBytes, s.HostTemperatureC, len(s.GPUs), s.Health, s.HealthReason)
	}
}

var _ GPUSource = (*gpu.Sampler)(nil)

// fakeGPUs is a GPUSource returning fixed GPUs and error.
type fakeGPUs struct {
	gpus []wire.GPU
	err  error
}

func (f *fakeGPUs) Sample(context.Context) ([]wire.GPU, error) { return f.gpus, f.err }

func TestCollectHealth(t *testing.T) {
	healthy := func(i int) wire.GPU { return wire.GPU{Index: i, UUID: "GPU-x", Health: wire.Healthy} }
	degraded := func(i int, why string) wire.GPU {
		return wire.GPU{Index: i, Health: wire.Degraded, HealthReason: why}
	}
	tests := []struct {
		name       string
		src        GPUSource
		wantGPUs   []wire.GPU
		wantHealth wire.Health
		wantReason string
	}{
		{name: "no gpu source", src: nil, wantGPUs: []wire.GPU{}, wantHealth: wire.Healthy},
		{name: "nil slice", src: &fakeGPUs{}, wantGPUs: []wire.GPU{}, wantHealth: wire.Healthy},
		{
			name:     "all healthy",
			src:      &fakeGPUs{gpus: []wire.GPU{healthy(0), healthy(1)}},
			wantGPUs: []wire.GPU{healthy(0), healthy(1)}, wantHealth: wire.Healthy,
		},
		{
			name:       "one degraded",
			src:        &fakeGPUs{gpus: []wire.GPU{healthy(0), healthy(1), degraded(2, "3 uncorrected ECC errors")}},
			wantGPUs:   []wire.GPU{healthy(0), healthy(1), degraded(2, "3 uncorrected ECC errors")},
			wantHealth: wire.Degraded, wantReason: "gpu 2: 3 uncorrected ECC errors",
		},
		{
			name: "two degraded",
			src: &fakeGPUs{gpus: []wire.GPU{
				degraded(0, "clocks slowed: hw thermal slowdown"), healthy(1), degraded(2, "gpu is lost"),
			}},
			wantGPUs: []wire.GPU{
				degraded(0, "clocks slowed: hw thermal slowdown"), healthy(1), degraded(2, "gpu is lost"),
			},
			wantHealth: wire.Degraded,
			wantReason: "gpu 0: clocks slowed: hw thermal slowdown; gpu 2: gpu is lost",
		},
		{
			name:       "gpu source fails",
			src:        &fakeGPUs{gpus: []wire.GPU{healthy(0)}, err: errors.New("nvml: device count: ERROR_UNKNOWN")},
			wantGPUs:   []wire.GPU{},
			wantHealth: wire.Degraded, wantReason: "gpu stats unavailable: nvml: device count: ERROR_UNKNOWN",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := NewCollector(tt.src, nil).Collect(context.Background())
			if err != nil {
				t.Fatalf("Collect: %v", err)
			}
			if !reflect.DeepEqual(s.GPUs, tt.wantGPUs) {
				t.Errorf("GPUs = %#v, want %#v", s.GPUs, tt.wantGPUs)
			}
			if s.Health != tt.wantHealth || s.HealthReason != tt.wantReason {
				t.Errorf("health = %s %q, want %s %q", s.Health, s.HealthReason, tt.wantHealth, tt.wantReason)
			}
		})
	}
}

// TestCollectGPUErrorLoggedOnChange checks that a persistent GPU failure is
// logged once, and its recovery once, not every collection.
func TestCollectGPUErrorLoggedOnChange(t *testing.T) {
	rec := &logRecorder{}
	src := &fakeGPUs{err: errors.New("boom")}
	c := NewCollector(src, slog.New(rec))
	collect := func() {
		t.Helper()
		if _, err := c.Collect(context.Background()); err != nil {
			t.Fatalf("Collect: %v", err)
		}
	}
	for range 3 {
		collect()
	}
	src.err = nil
	collect()
	collect()
	if rec.count(slog.LevelWarn) != 1 || rec.count(slog.LevelInfo) != 1 {
		t.Errorf("logged %q, want one warning and one recovery", rec.messages())
	}
}

// cancelingGPUs cancels the collection's context while "reading", as a
// deadline passing during a slow GPU read would.
type cancelingGPUs struct{ cancel context.CancelFunc }

func (c *cancelingGPUs) Sample(context.Context) ([]wire.GPU, error) {
	c.cancel()
	return []wire.GPU{}, nil
}

func TestCollectContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := NewCollector(&cancelingGPUs{cancel: cancel}, nil).Collect(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestBusyPercent(t *testing.T) {
	at := func(user, system, idle, iowait, guest float64) cpu.TimesStat {
		return cpu.TimesStat{CPU: "cpu-total", User: user, System: system, Idle: idle, Iowait: iowait, Guest: guest}
	}
	tests := []struct {
		name string
		a, b cpu.TimesStat
		want float64
	}{
		{name: "idle", a: at(10, 10, 100, 0, 0), b: at(10, 10, 200, 0, 0), want: 0},
		{name: "busy", a: at(10, 10, 100, 0, 0), b: at(60, 60, 100, 0, 0), want: 100},
		{name: "quarter", a: at(0, 0, 0, 0, 0), b: at(20, 5, 70, 5, 0), want: 25},
		{name: "iowait counts as idle", a: at(0, 0, 0, 0, 0), b: at(50, 0, 0, 50, 0), want: 50},
		{name: "no time passed", a: at(1, 1, 1, 0, 0), b: at(1, 1, 1, 0, 0), want: 0},
		{name: "counters went back", a: at(50, 50, 50, 0, 0), b: at(10, 10, 10, 0, 0), want: 0},
	}
	// Linux counts guest time inside user time as well; elsewhere it is separate.
	guestWant := 50.0
	if runtime.GOOS != "linux" {
		guestWant = 100.0 / 150 * 100
	}
	tests = append(tests, struct {
		name string
		a, b cpu.TimesStat
		want float64
	}{name: "guest", a: at(0, 0, 0, 0, 0), b: at(50, 0, 50, 0, 50), want: guestWant})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := busyPercent(tt.a, tt.b); math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("busyPercent = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHottestC(t *testing.T) {
	st := func(vs ...float64) []sensors.TemperatureStat {
		out := make([]sensors.TemperatureStat, len(vs))
		for i, v := range vs {
			out[i] = sensors.TemperatureStat{SensorKey: "s", Temperature: v}
		}
		return out
	}
	tests := []struct {
		name   string
		temps  []sensors.TemperatureStat
		want   float64
		wantOK bool
	}{
		{name: "none", temps: nil},
		{name: "absent sensors only", temps: st(0, -273, math.NaN(), math.Inf(1))},
		{name: "hottest wins", temps: st(41.5, 73, 0, 55), want: 73, wantOK: true},
		{name: "one", temps: st(38), want: 38, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := hottestC(tt.temps)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("hottestC = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestUsedRAM(t *testing.T) {
	tests := []struct {
		name             string
		total, available uint64
		want             uint64
	}{
		{name: "normal", total: 100, available: 30, want: 70},
		{name: "all free", total: 100, available: 100, want: 0},
		{name: "available over total", total: 100, available: 120, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := usedRAM(tt.total, tt.available); got != tt.want {
				t.Errorf("usedRAM(%d, %d) = %d, want %d", tt.total, tt.available, got, tt.want)
			}
		})
	}
}

var _ ProcessSource = (*gpu.Sampler)(nil)

// processGPUs is a GPUSource that also lists processes.
type processGPUs struct {
	fakeGPUs
	procs []gpu.Process
}

func (p *processGPUs) Processes() []gpu.Process { return p.procs }

func TestCollectProcesses(t *testing.T) {
	used := uint64(1 << 30)
	procs := []gpu.Process{{PID: 42, GPUIndex: 0, GPUUUID: "GPU-0", UsedBytes: &used}}
	c := NewCollector(&processGPUs{fakeGPUs{gpus: []wire.GPU{{Index: 0, UUID: "GPU-0", Health: wire.Healthy}}}, procs}, nil)
	s, err := c.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Processes, procs) {
		t.Fatalf("processes %+v, want %+v", s.Processes, procs)
	}
	c = NewCollector(&processGPUs{fakeGPUs{err: errors.New("nvml gone")}, procs}, nil)
	if s, _ = c.Collect(context.Background()); s.Processes != nil {
		t.Fatalf("processes %+v from a failed GPU sample", s.Processes)
	}
}
