package hoststats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/rbee/heartbeat/gpu"
	"github.com/rbee/heartbeat/wire"
	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/sensors"
)

// cpuWindow is the shortest span CPU use is measured over. The kernel counts
// CPU time in 10 ms ticks per core, so a shorter span is mostly noise; when
// the previous reading is more recent (or there is none), the collection
// measures over cpuWindow itself.
const cpuWindow = 200 * time.Millisecond

// Sample is one collection of the machine's statistics.
type Sample struct {
	// CPUPercent is the share of all cores that was busy since the previous
	// collection, 0–100.
	CPUPercent float64
	// RAMUsedBytes is RAMTotalBytes less what is available to new work
	// without swapping (page cache counts as available).
	RAMUsedBytes  uint64
	RAMTotalBytes uint64
	// HostTemperatureC is the hottest host sensor in °C; nil where the
	// platform exposes none.
	HostTemperatureC *float64
	// GPUs has one record per GPU; empty, never nil, without GPU data.
	GPUs []wire.GPU
	// Processes lists the processes holding GPU memory, one record per
	// process and GPU, when the GPU source is a ProcessSource.
	Processes []gpu.Process
	// Health is degraded when a GPU is degraded or cannot be read;
	// HealthReason then says which and why.
	Health       wire.Health
	HealthReason string
	// TakenAt is when the collection finished.
	TakenAt time.Time
}

// GPUSource reports the machine's GPUs; *gpu.Sampler implements it. Sample
// must return an empty, non-nil slice and no error where there is no GPU
// data. The Collector may call Sample from several goroutines at once when
// its own Collect is called concurrently.
type GPUSource interface {
	Sample(ctx context.Context) ([]wire.GPU, error)
}

// ProcessSource is a GPUSource that also lists the processes holding GPU
// memory at its last Sample; *gpu.Sampler implements it.
type ProcessSource interface {
	Processes() []gpu.Process
}

// Collector reads the machine's statistics in one call. CPUPercent is
// measured between successive collections, so keep one Collector per
// machine. Its methods may be called concurrently.
type Collector struct {
	gpus   GPUSource
	logger *slog.Logger

	mu      sync.Mutex
	prevCPU cpu.TimesStat
	prevAt  time.Time // when prevCPU was read; zero before the first reading
	gpuErr  string    // last GPU failure logged, to log changes only
	noTemp  bool      // absence of temperature sensors already logged
}

// NewCollector returns a Collector that reads GPUs from gpus; a nil gpus
// reports no GPU data. A nil logger discards.
func NewCollector(gpus GPUSource, logger *slog.Logger) *Collector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Collector{gpus: gpus, logger: logger.With("component", "hoststats")}
}

// Collect returns the machine's statistics now. It returns an error when the
// CPU or memory figures cannot be read or ctx ends first; a GPU failure
// does not fail the collection but marks the Sample degraded. The first
// call, and any call within 200 ms of the previous one, measures CPU use
// over a 200 ms window of its own.
func (c *Collector) Collect(ctx context.Context) (Sample, error) {
	pct, err := c.cpuPercent(ctx)
	if err != nil {
		return Sample{}, err
	}
	vm, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		return Sample{}, fmt.Errorf("read memory: %w", err)
	}
	s := Sample{
		CPUPercent:       pct,
		RAMTotalBytes:    vm.Total,
		RAMUsedBytes:     usedRAM(vm.Total, vm.Available),
		HostTemperatureC: c.hostTemperature(ctx),
		GPUs:             []wire.GPU{},
		Health:           wire.Healthy,
	}

	var unwell []string
	if c.gpus != nil {
		gpus, err := c.gpus.Sample(ctx)
		if ctxErr := ctx.Err(); ctxErr != nil {
			return Sample{}, fmt.Errorf("read gpus: %w", ctxErr)
		}
		c.noteGPUError(err)
		if err != nil {
			unwell = append(unwell, "gpu stats unavailable: "+err.Error())
		} else if gpus != nil {
			s.GPUs = gpus
			if ps, ok := c.gpus.(ProcessSource); ok {
				s.Processes = ps.Processes()
			}
		}
	}
	for _, g := range s.GPUs {
		if g.Health == wire.Degraded || g.Health == wire.Unhealthy {
			unwell = append(unwell, fmt.Sprintf("gpu %d: %s", g.Index, g.HealthReason))
		}
	}
	if len(unwell) > 0 {
		s.Health, s.HealthReason = wire.Degraded, strings.Join(unwell, "; ")
	}
	s.TakenAt = time.Now()
	return s, nil
}

// noteGPUError logs a GPU failure when it differs from the last one, and its
// recovery, so a persistent failure is not logged every collection.
func (c *Collector) noteGPUError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil && c.gpuErr != "":
		c.gpuErr = ""
		c.logger.Info("gpu stats recovered")
	case err != nil && err.Error() != c.gpuErr:
		c.gpuErr = err.Error()
		c.logger.Warn("gpu stats unavailable", "err", err)
	}
}

// cpuPercent returns the busy share of all cores since the previous call,
// or over cpuWindow when that call was too recent or there was none.
func (c *Collector) cpuPercent(ctx context.Context) (float64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, err := readCPU(ctx)
	if err != nil {
		return 0, err
	}
	now := time.Now()
	prev := c.prevCPU
	if c.prevAt.IsZero() || now.Sub(c.prevAt) < cpuWindow {
		prev = cur
		t := time.NewTimer(cpuWindow)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("read cpu: %w", ctx.Err())
		case <-t.C:
		}
		if cur, err = readCPU(ctx); err != nil {
			return 0, err
		}
		now = time.Now()
	}
	c.prevCPU, c.prevAt = cur, now
	return busyPercent(prev, cur), nil
}

func readCPU(ctx context.Context) (cpu.TimesStat, error) {
	times, err := cpu.TimesWithContext(ctx, false)
	if err != nil {
		return cpu.TimesStat{}, fmt.Errorf("read cpu times: %w", err)
	}
	if len(times) == 0 {
		return cpu.TimesStat{}, errors.New("read cpu times: no data")
	}
	return times[0], nil
}

// cpuSeconds returns the CPU time t accounts for. On Linux guest time is
// already counted in user time, so it is left out.
func cpuSeconds(t cpu.TimesStat) float64 {
	total := t.User + t.System + t.Idle + t.Nice + t.Iowait + t.Irq + t.Softirq + t.Steal + t.Guest + t.GuestNice
	if runtime.GOOS == "linux" {
		total -= t.Guest + t.GuestNice
	}
	return total
}

// busyPercent returns the share of CPU time between a and b that was neither
// idle nor waiting for I/O, clamped to 0–100.
func busyPercent(a, b cpu.TimesStat) float64 {
	total := cpuSeconds(b) - cpuSeconds(a)
	if total <= 0 {
		return 0
	}
	idle := (b.Idle + b.Iowait) - (a.Idle + a.Iowait)
	return math.Max(0, math.Min(100, (total-idle)/total*100))
}

// usedRAM is total less available, or 0 if a platform reports more available
// than total.
func usedRAM(total, available uint64) uint64 {
	if available > total {
		return 0
	}
	return total - available
}

// hostTemperature returns the hottest readable sensor, or nil if none.
// gopsutil returns what it could read alongside warnings for the rest, so
// the readings are used whatever the error.
func (c *Collector) hostTemperature(ctx context.Context) *float64 {
	temps, err := sensors.TemperaturesWithContext(ctx)
	hottest, ok := hottestC(temps)
	if !ok {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.noTemp {
			c.noTemp = true
			c.logger.Debug("no host temperature sensors", "err", err)
		}
		return nil
	}
	return &hottest
}

// hottestC returns the highest plausible reading; zero, negative and
// non-finite values are how absent sensors show up.
func hottestC(temps []sensors.TemperatureStat) (float64, bool) {
	hottest, ok := 0.0, false
	for _, t := range temps {
		v := t.Temperature
		if math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
			continue
		}
		if !ok || v > hottest {
			hottest, ok = v, true
		}
	}
	return hottest, ok
}
