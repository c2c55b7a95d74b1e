//go:build linux && cgo && nvml

package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/rbee/heartbeat/wire"
)

const gib = uint64(1) << 30

// reading is what one mock device reports through the functions the
// Sampler calls.
type reading struct {
	uuid         string
	used, total  uint64
	util         uint32
	tempC        uint32
	powerMW      uint32
	ecc          uint64
	clocks       uint64
	retired      nvml.EnableState
	remapPending bool
	remapFailed  bool
}

// readingFor returns distinct, healthy values for GPU i.
func readingFor(i int) reading {
	return reading{
		uuid:    fmt.Sprintf("GPU-00000000-0000-0000-0000-00000000000%d", i),
		used:    uint64(i+1) * gib,
		total:   80 * gib,
		util:    uint32(10 * i),
		tempC:   uint32(40 + i),
		powerMW: uint32(100_000 + 1_234*i),
		clocks:  nvml.ClocksEventReasonGpuIdle,
		retired: nvml.FEATURE_DISABLED,
	}
}

// setReading points every function the Sampler calls on d at r. The
// functions check their arguments, so a wrong sensor or counter type shows.
func setReading(d *server.Device, r reading) {
	d.UUID = r.uuid
	d.MemoryInfo = nvml.Memory{Total: r.total, Used: r.used, Free: r.total - r.used}
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return nvml.Utilization{Gpu: r.util, Memory: 99}, nvml.SUCCESS
	}
	d.GetTemperatureFunc = func(s nvml.TemperatureSensors) (uint32, nvml.Return) {
		if s != nvml.TEMPERATURE_GPU {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		return r.tempC, nvml.SUCCESS
	}
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return r.powerMW, nvml.SUCCESS }
	d.GetTotalEccErrorsFunc = func(e nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
		if e != nvml.MEMORY_ERROR_TYPE_UNCORRECTED || c != nvml.VOLATILE_ECC {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		return r.ecc, nvml.SUCCESS
	}
	d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) { return r.clocks, nvml.SUCCESS }
	d.GetCurrentClocksThrottleReasonsFunc = func() (uint64, nvml.Return) { return r.clocks, nvml.SUCCESS }
	d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return r.retired, nvml.SUCCESS }
	d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) {
		return 0, 0, r.remapPending, r.remapFailed, nvml.SUCCESS
	}
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
	d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
}

// wantGPU is the record a healthy device reading r at index i must produce.
func wantGPU(i int, r reading) wire.GPU {
	used, total := r.used, r.total
	util, temp, power := float64(r.util), float64(r.tempC), float64(r.powerMW)/1000
	return wire.GPU{
		Index: i, UUID: r.uuid, Name: "NVIDIA H100 80GB HBM3",
		VRAMUsedBytes: &used, VRAMTotalBytes: &total,
		UtilPercent: &util, TemperatureC: &temp, PowerW: &power,
		Health: wire.Healthy,
	}
}

// newServer returns go-nvml's DGX H100 mock (8 GPUs) with every device
// reporting readingFor(its index).
func newServer(t *testing.T) *server.Server {
	t.Helper()
	srv := dgxh100.New()
	if len(srv.Devices) != 8 {
		t.Fatalf("dgxh100 mock has %d devices, want 8", len(srv.Devices))
	}
	for i, d := range srv.Devices {
		setReading(d.(*server.Device), readingFor(i))
	}
	return srv
}

func device(srv *server.Server, i int) *server.Device { return srv.Devices[i].(*server.Device) }

func newSampler(t *testing.T, lib nvml.Interface) (*Sampler, *logRecorder) {
	t.Helper()
	rec, logger := newRecorder(t)
	s := NewWithLibrary(lib, logger)
	t.Cleanup(func() { _ = s.Close() })
	return s, rec
}

func sample(t *testing.T, s *Sampler) []wire.GPU {
	t.Helper()
	gpus, err := s.Sample(context.Background())
	if err != nil {
		t.Fatalf("Sample: %v", err)
	}
	if gpus == nil {
		t.Fatal("Sample returned nil, want a non-nil slice")
	}
	return gpus
}

// gpuString renders g with its pointer fields dereferenced, for failure messages.
func gpuString(g wire.GPU) string {
	f := func(p any) string {
		v := reflect.ValueOf(p)
		if v.IsNil() {
			return "nil"
		}
		return fmt.Sprint(v.Elem().Interface())
	}
	return fmt.Sprintf("{%d %q %q used=%s total=%s util=%s temp=%s power=%s %s %q}",
		g.Index, g.UUID, g.Name, f(g.VRAMUsedBytes), f(g.VRAMTotalBytes), f(g.UtilPercent),
		f(g.TemperatureC), f(g.PowerW), g.Health, g.HealthReason)
}

func checkGPU(t *testing.T, got, want wire.GPU) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("gpu %d:\n got %s\nwant %s", want.Index, gpuString(got), gpuString(want))
	}
}

func TestSampleReportsEveryField(t *testing.T) {
	srv := newServer(t)
	s, _ := newSampler(t, srv)

	for round := range 2 {
		gpus := sample(t, s)
		if len(gpus) != 8 {
			t.Fatalf("round %d: %d GPUs, want 8", round, len(gpus))
		}
		for i, g := range gpus {
			checkGPU(t, g, wantGPU(i, readingFor(i)))
		}
	}
	if n := len(srv.InitCalls()); n != 1 {
		t.Errorf("Init called %d times over two samples, want 1", n)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := len(srv.ShutdownCalls()); n != 1 {
		t.Errorf("Shutdown called %d times, want 1", n)
	}
	if _, err := s.Sample(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Sample after Close: err = %v, want ErrClosed", err)
	}
}

func TestSamplePartialRecord(t *testing.T) {
	const idx = 3
	fail := func(ret nvml.Return) func() (uint32, nvml.Return) {
		return func() (uint32, nvml.Return) { return 12345, ret }
	}
	tests := []struct {
		name  string
		spoil func(srv *server.Server, d *server.Device)
		want  func(g *wire.GPU)
	}{
		{
			name: "temperature not supported",
			spoil: func(_ *server.Server, d *server.Device) {
				d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
			},
			want: func(g *wire.GPU) { g.TemperatureC = nil },
		},
		{
			name:  "power call fails",
			spoil: func(_ *server.Server, d *server.Device) { d.GetPowerUsageFunc = fail(nvml.ERROR_UNKNOWN) },
			want:  func(g *wire.GPU) { g.PowerW = nil },
		},
		{
			name: "memory not supported",
			spoil: func(_ *server.Server, d *server.Device) {
				d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_NOT_SUPPORTED }
			},
			want: func(g *wire.GPU) { g.VRAMUsedBytes, g.VRAMTotalBytes = nil, nil },
		},
		{
			name:  "utilization function missing",
			spoil: func(_ *server.Server, d *server.Device) { d.GetUtilizationRatesFunc = nil },
			want:  func(g *wire.GPU) { g.UtilPercent = nil },
		},
		{
			name: "uuid and name fail",
			spoil: func(_ *server.Server, d *server.Device) {
				d.GetUUIDFunc = func() (string, nvml.Return) { return "junk", nvml.ERROR_NO_PERMISSION }
				d.GetNameFunc = func() (string, nvml.Return) { return "junk", nvml.ERROR_UNKNOWN }
			},
			want: func(g *wire.GPU) { g.UUID, g.Name = "", "" },
		},
		{
			name: "health markers not supported",
			spoil: func(_ *server.Server, d *server.Device) {
				d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
					return 7, nvml.ERROR_NOT_SUPPORTED
				}
				d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
					return nvml.ClocksThrottleReasonHwSlowdown, nvml.ERROR_NOT_SUPPORTED
				}
				d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) {
					return nvml.FEATURE_ENABLED, nvml.ERROR_NOT_SUPPORTED
				}
				d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) {
					return 1, 1, true, true, nvml.ERROR_NOT_SUPPORTED
				}
			},
			want: func(*wire.GPU) {},
		},
		{
			name: "nothing but the handle",
			spoil: func(_ *server.Server, d *server.Device) {
				d.Device = mock.Device{} // every device function unset
			},
			want: func(g *wire.GPU) { *g = wire.GPU{Index: idx, Health: wire.Healthy} },
		},
		{
			name: "gpu lost mid-read",
			spoil: func(_ *server.Server, d *server.Device) {
				d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
			},
			want: func(g *wire.GPU) {
				g.TemperatureC = nil
				g.Health, g.HealthReason = wire.Degraded, "gpu is lost"
			},
		},
		{
			name: "handle unavailable",
			spoil: func(srv *server.Server, _ *server.Device) {
				byIndex := srv.DeviceGetHandleByIndexFunc
				srv.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
					if i == idx {
						return nil, nvml.ERROR_GPU_IS_LOST
					}
					return byIndex(i)
				}
			},
			want: func(g *wire.GPU) {
				*g = wire.GPU{Index: idx, Health: wire.Degraded, HealthReason: "unreachable: ERROR_GPU_IS_LOST"}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t)
			tt.spoil(srv, device(srv, idx))
			s, _ := newSampler(t, srv)

			gpus := sample(t, s)
			if len(gpus) != 8 {
				t.Fatalf("%d GPUs, want 8", len(gpus))
			}
			for i, g := range gpus {
				want := wantGPU(i, readingFor(i))
				if i == idx {
					tt.want(&want)
				}
				checkGPU(t, g, want)
			}
		})
	}
}

func TestSampleUnwell(t *testing.T) {
	tests := []struct {
		name       string
		change     func(r *reading)
		wantHealth wire.Health
		wantReason string
	}{
		{
			name:       "uncorrected ecc errors",
			change:     func(r *reading) { r.ecc = 3 },
			wantHealth: wire.Degraded, wantReason: "3 uncorrected ECC errors",
		},
		{
			name:       "hw thermal slowdown",
			change:     func(r *reading) { r.clocks = nvml.ClocksThrottleReasonHwThermalSlowdown },
			wantHealth: wire.Degraded, wantReason: "clocks slowed: hw thermal slowdown",
		},
		{
			name: "several slowdowns",
			change: func(r *reading) {
				r.clocks = nvml.ClocksThrottleReasonHwSlowdown | nvml.ClocksThrottleReasonSwThermalSlowdown |
					nvml.ClocksThrottleReasonHwPowerBrakeSlowdown | nvml.ClocksEventReasonGpuIdle
			},
			wantHealth: wire.Degraded, wantReason: "clocks slowed: hw slowdown, sw thermal slowdown, hw power brake",
		},
		{
			name: "idle, power cap and application clocks are normal",
			change: func(r *reading) {
				r.clocks = nvml.ClocksEventReasonGpuIdle | nvml.ClocksEventReasonSwPowerCap |
					nvml.ClocksEventReasonApplicationsClocksSetting
			},
			wantHealth: wire.Healthy,
		},
		{
			name:       "retired pages pending",
			change:     func(r *reading) { r.retired = nvml.FEATURE_ENABLED },
			wantHealth: wire.Degraded, wantReason: "retired pages pending",
		},
		{
			name:       "row remapping pending",
			change:     func(r *reading) { r.remapPending = true },
			wantHealth: wire.Degraded, wantReason: "row remapping pending",
		},
		{
			name:       "row remapping failed",
			change:     func(r *reading) { r.remapFailed = true },
			wantHealth: wire.Degraded, wantReason: "row remapping failed",
		},
		{
			name: "ecc and thermal together",
			change: func(r *reading) {
				r.ecc = 2
				r.clocks = nvml.ClocksThrottleReasonHwThermalSlowdown
			},
			wantHealth: wire.Degraded, wantReason: "2 uncorrected ECC errors; clocks slowed: hw thermal slowdown",
		},
	}
	const idx = 5
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t)
			r := readingFor(idx)
			tt.change(&r)
			setReading(device(srv, idx), r)
			s, _ := newSampler(t, srv)

			gpus := sample(t, s)
			for i, g := range gpus {
				want := wantGPU(i, readingFor(i))
				if i == idx {
					want.Health, want.HealthReason = tt.wantHealth, tt.wantReason
				}
				checkGPU(t, g, want)
			}
		})
	}
}

// TestSampleOldDriver checks that without the event-reasons symbol (drivers
// before R535) the Sampler asks for throttle reasons instead.
func TestSampleOldDriver(t *testing.T) {
	srv := newServer(t)
	srv.LookupSymbolFunc = func(name string) error {
		if name == eventReasonsSymbol {
			return errors.New("symbol not found")
		}
		return nil
	}
	d := device(srv, 0)
	d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
		return nvml.ClocksThrottleReasonHwSlowdown, nvml.SUCCESS
	}
	d.GetCurrentClocksThrottleReasonsFunc = func() (uint64, nvml.Return) {
		return nvml.ClocksThrottleReasonSwThermalSlowdown, nvml.SUCCESS
	}
	s, _ := newSampler(t, srv)

	g := sample(t, s)[0]
	if g.Health != wire.Degraded || g.HealthReason != "clocks slowed: sw thermal slowdown" {
		t.Errorf("health = %s %q, want degraded from throttle reasons", g.Health, g.HealthReason)
	}
	if n := len(d.GetCurrentClocksEventReasonsCalls()); n != 0 {
		t.Errorf("GetCurrentClocksEventReasons called %d times, want 0", n)
	}
}

func TestSampleNoGPUData(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(srv *server.Server)
		wantLevel slog.Level // of the one line logged over three samples
		wantErr   string     // the error the line names
		wantInits int        // Init calls over three samples
		wantCount bool       // DeviceGetCount is reached
	}{
		{
			name:      "library not found",
			setup:     func(srv *server.Server) { srv.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND } },
			wantLevel: slog.LevelInfo, wantErr: "LIBRARY_NOT_FOUND", wantInits: 3,
		},
		{
			name:      "driver not loaded",
			setup:     func(srv *server.Server) { srv.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED } },
			wantLevel: slog.LevelWarn, wantErr: "DRIVER_NOT_LOADED", wantInits: 3,
		},
		{
			name:      "init fails",
			setup:     func(srv *server.Server) { srv.InitFunc = func() nvml.Return { return nvml.ERROR_NO_PERMISSION } },
			wantLevel: slog.LevelWarn, wantErr: "NO_PERMISSION", wantInits: 3,
		},
		{
			name:      "init panics",
			setup:     func(srv *server.Server) { srv.InitFunc = nil },
			wantLevel: slog.LevelWarn, wantErr: "FUNCTION_NOT_FOUND",
		},
		{
			name:      "no devices",
			setup:     func(srv *server.Server) { srv.Devices = nil },
			wantLevel: slog.LevelDebug, wantInits: 1,
			wantCount: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t)
			tt.setup(srv)
			s, rec := newSampler(t, srv)

			for range 3 {
				if gpus := sample(t, s); len(gpus) != 0 {
					t.Fatalf("Sample = %d GPUs, want none", len(gpus))
				}
			}
			if len(rec.messages()) != 1 || rec.count(tt.wantLevel) != 1 || !strings.Contains(rec.attrs(), tt.wantErr) {
				t.Errorf("logged %q (%s) over three samples, want one %s line naming %q",
					rec.messages(), rec.attrs(), tt.wantLevel, tt.wantErr)
			}
			if n := len(srv.InitCalls()); srv.InitFunc != nil && n != tt.wantInits {
				t.Errorf("Init called %d times, want %d", n, tt.wantInits)
			}
			if got := len(srv.DeviceGetCountCalls()) > 0; got != tt.wantCount {
				t.Errorf("DeviceGetCount reached = %v, want %v", got, tt.wantCount)
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			wantShutdown := 0
			if tt.wantCount {
				wantShutdown = 1 // only a successful Init is shut down
			}
			if n := len(srv.ShutdownCalls()); n != wantShutdown {
				t.Errorf("Shutdown called %d times, want %d", n, wantShutdown)
			}
		})
	}
}

// TestInitRetriedUntilTheDriverLoads is a hive started before the NVIDIA
// driver: Init fails, is tried again at each sample with one warning naming
// the error, and once it works the GPUs are read; a GPU that appears later
// is reported too.
func TestInitRetriedUntilTheDriverLoads(t *testing.T) {
	srv := newServer(t)
	all := srv.Devices
	srv.Devices = all[:1]
	var mu sync.Mutex
	driverUp := false
	srv.InitFunc = func() nvml.Return {
		mu.Lock()
		defer mu.Unlock()
		if !driverUp {
			return nvml.ERROR_DRIVER_NOT_LOADED
		}
		return nvml.SUCCESS
	}
	srv.ShutdownFunc = func() nvml.Return { return nvml.SUCCESS }
	s, rec := newSampler(t, srv)
	for range 3 {
		if gpus := sample(t, s); len(gpus) != 0 {
			t.Fatalf("Sample = %d GPUs before the driver loaded", len(gpus))
		}
	}
	if rec.count(slog.LevelWarn) != 1 || !strings.Contains(rec.attrs(), "DRIVER_NOT_LOADED") {
		t.Fatalf("logged %q (%s), want one warning naming the driver not loaded", rec.messages(), rec.attrs())
	}
	mu.Lock()
	driverUp = true
	mu.Unlock()
	if gpus := sample(t, s); len(gpus) != 1 {
		t.Fatalf("Sample = %d GPUs once the driver loaded, want 1", len(gpus))
	}
	srv.Devices = all // a GPU appears (hot-plug, MIG reconfigured)
	gpus := sample(t, s)
	if len(gpus) != 8 {
		t.Fatalf("Sample = %d GPUs after more appeared, want 8", len(gpus))
	}
	checkGPU(t, gpus[7], wantGPU(7, readingFor(7)))
	if n := len(srv.InitCalls()); n != 4 {
		t.Errorf("Init called %d times, want 4 (three failures, one success, then no more)", n)
	}
}

// TestCloseNeverWaitsOnShutdownUnderTheLock: a Shutdown stuck in the driver
// holds up only Close itself; a concurrent Sample returns ErrClosed at once.
func TestCloseNeverWaitsOnShutdownUnderTheLock(t *testing.T) {
	srv := newServer(t)
	entered, release := make(chan struct{}), make(chan struct{})
	srv.ShutdownFunc = func() nvml.Return {
		close(entered)
		<-release
		return nvml.SUCCESS
	}
	s, _ := newSampler(t, srv)
	sample(t, s)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	receive(t, entered, "Close to reach the driver's Shutdown")
	sampled := make(chan error, 1)
	go func() { _, err := s.Sample(context.Background()); sampled <- err }()
	if err := receive(t, sampled, "a Sample while Shutdown hangs"); !errors.Is(err, ErrClosed) {
		t.Errorf("Sample during Close: err = %v, want ErrClosed", err)
	}
	close(release)
	if err := receive(t, closed, "Close to return"); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestSampleNilLibrary(t *testing.T) {
	s, rec := newSampler(t, nil)
	for range 2 {
		if gpus := sample(t, s); len(gpus) != 0 {
			t.Fatalf("Sample = %d GPUs, want none", len(gpus))
		}
	}
	if n := rec.count(slog.LevelDebug); n != 1 {
		t.Errorf("logged %q, want one debug line", rec.messages())
	}
}

// TestFieldFailureLoggedOnce checks that a field a device never supports is
// logged once per device, not once per sample.
func TestFieldFailureLoggedOnce(t *testing.T) {
	srv := newServer(t)
	for _, d := range srv.Devices {
		d.(*server.Device).GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	s, rec := newSampler(t, srv)
	for range 3 {
		sample(t, s)
	}
	if n := rec.count(slog.LevelDebug); n != len(srv.Devices) {
		t.Errorf("logged %d debug lines over three samples, want one per device (%d): %q",
			n, len(srv.Devices), rec.messages())
	}
}

func TestSampleDeviceCountFails(t *testing.T) {
	srv := newServer(t)
	srv.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	s, _ := newSampler(t, srv)

	gpus, err := s.Sample(context.Background())
	if !errors.Is(err, ErrNVML) || !strings.Contains(err.Error(), "device count") {
		t.Errorf("err = %v, want ErrNVML naming the device count", err)
	}
	if gpus == nil || len(gpus) != 0 {
		t.Errorf("gpus = %#v, want an empty, non-nil slice", gpus)
	}
}

func TestSampleContextDone(t *testing.T) {
	s, _ := newSampler(t, newServer(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	gpus, err := s.Sample(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if gpus == nil || len(gpus) != 0 {
		t.Errorf("gpus = %#v, want an empty, non-nil slice", gpus)
	}
}

// TestCloseDuringSample checks that Close does not wait for a sample stuck
// in the driver, and that NVML is shut down once that sample returns.
func TestCloseDuringSample(t *testing.T) {
	srv := newServer(t)
	entered, release := make(chan struct{}), make(chan struct{})
	device(srv, 0).GetPowerUsageFunc = func() (uint32, nvml.Return) {
		close(entered)
		<-release
		return 1000, nvml.SUCCESS
	}
	s, _ := newSampler(t, srv)

	type result struct {
		gpus []wire.GPU
		err  error
	}
	done := make(chan result, 1)
	go func() {
		gpus, err := s.Sample(context.Background())
		done <- result{gpus, err}
	}()
	receive(t, entered, "the sample to reach the driver")

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := len(srv.ShutdownCalls()); n != 0 {
		t.Fatalf("Shutdown called %d times while a sample was in the driver, want 0", n)
	}
	close(release)
	r := receive(t, done, "the sample to return")
	if r.err != nil || len(r.gpus) != 8 {
		t.Errorf("stuck sample returned %d GPUs, err %v; want 8, nil", len(r.gpus), r.err)
	}
	if n := len(srv.ShutdownCalls()); n != 1 {
		t.Errorf("Shutdown called %d times after the sample returned, want 1", n)
	}
	if _, err := s.Sample(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Sample after Close: err = %v, want ErrClosed", err)
	}
}

// receive waits for a value on ch, failing the test if none comes within a
// generous deadline (a hang guard, not a timing assertion).
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// attrs returns every logged attribute as key=value text.
func (r *logRecorder) attrs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, rec := range r.recs {
		rec.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, "%s=%v ", a.Key, a.Value)
			return true
		})
	}
	return b.String()
}
