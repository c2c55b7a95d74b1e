//go:build linux && cgo && nvml

package gpu

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/rbee/heartbeat/wire"
)

// NVML reports whether this build reads GPUs through NVML: true here.
const NVML = true

// libState is where the Sampler stands with the NVML library.
type libState int

const (
	libNew         libState = iota // Init not tried yet
	libReady                       // Init succeeded; Shutdown is owed
	libRetry                       // Init failed; it is tried again at the next Sample
	libUnavailable                 // no library handle at all: no GPU data, for good
	libShutdown                    // Shutdown done
)

// eventReasonsSymbol is the newer name of the clock-reasons call; drivers
// older than R535 have only nvmlDeviceGetCurrentClocksThrottleReasons.
const eventReasonsSymbol = "nvmlDeviceGetCurrentClocksEventReasons"

// slowdowns are the clock event reasons that mean the GPU is unwell rather
// than idle or deliberately capped. go-nvml names these bits only with the
// older "Throttle" prefix; the event-reason bitmask uses the same values.
var slowdowns = []struct {
	bit  uint64
	name string
}{
	{nvml.ClocksThrottleReasonHwSlowdown, "hw slowdown"},
	{nvml.ClocksThrottleReasonHwThermalSlowdown, "hw thermal slowdown"},
	{nvml.ClocksThrottleReasonSwThermalSlowdown, "sw thermal slowdown"},
	{nvml.ClocksThrottleReasonHwPowerBrakeSlowdown, "hw power brake"},
}

// Sampler reads every GPU's statistics through NVML. NVML is initialised on
// the first Sample, and again at every Sample until it succeeds (a driver
// that loads after the hive started); it is shut down by Close. Every GPU is
// counted afresh at each Sample, so a GPU that appears later is reported.
// Its methods may be called concurrently: samples are serialised, no NVML
// call is made under the lock Close takes, and Close does not wait for a
// sample stuck in the driver (the sample shuts NVML down when it returns).
type Sampler struct {
	lib     nvml.Interface
	loadErr error // set when the library could not even be constructed
	logger  *slog.Logger

	// sampleMu serialises Sample; it is held while NVML is read, which
	// may block in the driver, so Close never takes it.
	sampleMu     sync.Mutex
	eventReasons bool                   // use GetCurrentClocksEventReasons; guarded by sampleMu
	noDevices    bool                   // "no gpus" already logged; guarded by sampleMu
	initErr      nvml.Return            // the last Init failure logged; guarded by sampleMu
	failures     map[string]nvml.Return // last failure per device call, to log changes only; guarded by sampleMu

	procMu sync.Mutex
	procs  []Process // from the last sample

	mu     sync.Mutex
	state  libState
	busy   bool // a Sample is using NVML
	closed bool
}

// New returns a Sampler backed by the system's NVML library
// (libnvidia-ml.so.1). It never fails: when the library is missing, Sample
// reports no GPU data. A nil logger discards.
func New(logger *slog.Logger) *Sampler {
	lib, err := loadLibrary()
	s := NewWithLibrary(lib, logger)
	s.loadErr = err
	return s
}

// loadLibrary constructs go-nvml's library handle. The handle only loads the
// shared object on Init, but a panic here must not take the process down.
func loadLibrary() (lib nvml.Interface, err error) {
	defer func() {
		if r := recover(); r != nil {
			lib, err = nil, fmt.Errorf("%w: load library: %v", ErrNVML, r)
		}
	}()
	return nvml.New(), nil
}

// NewWithLibrary returns a Sampler that reads GPUs through lib, such as
// go-nvml's mock. The Sampler calls lib.Init on the first Sample and
// lib.Shutdown on Close. A nil lib reports no GPU data; a nil logger discards.
func NewWithLibrary(lib nvml.Interface, logger *slog.Logger) *Sampler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Sampler{
		lib:      lib,
		logger:   logger.With("component", "gpu"),
		failures: map[string]nvml.Return{},
	}
}

// Sample returns one record per GPU, in NVML index order. With no NVML
// library, no driver or no GPU it returns an empty, non-nil slice and no
// error. A device call that fails leaves that field nil; only a failure to
// count the devices, or ctx ending, fails the sample, which then returns an
// empty slice and an error wrapping ErrNVML or ctx's error. It returns
// ErrClosed after Close.
func (s *Sampler) Sample(ctx context.Context) ([]wire.GPU, error) {
	s.sampleMu.Lock()
	defer s.sampleMu.Unlock()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return []wire.GPU{}, ErrClosed
	}
	s.busy = true
	state := s.state
	s.mu.Unlock()
	defer s.release()

	if state == libNew || state == libRetry {
		state = s.initLibrary()
		s.mu.Lock()
		s.state = state
		s.mu.Unlock()
	}
	if state != libReady {
		return []wire.GPU{}, nil
	}
	return s.readAll(ctx)
}

// release ends a Sample, shutting NVML down if Close came meanwhile.
func (s *Sampler) release() {
	s.mu.Lock()
	s.busy = false
	shut := s.closed && s.takeShutdownLocked()
	s.mu.Unlock()
	if shut {
		if err := s.shutdown(); err != nil {
			s.logger.Warn("nvml shutdown failed", "err", err)
		}
	}
}

// Close shuts NVML down if it was initialised. A Sample in progress is not
// waited for: it shuts NVML down itself when it returns. Close is safe to
// call more than once; it returns an error wrapping ErrNVML if Shutdown fails.
func (s *Sampler) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	shut := !s.busy && s.takeShutdownLocked()
	s.mu.Unlock()
	if shut {
		return s.shutdown()
	}
	return nil
}

// takeShutdownLocked marks NVML shut down and reports whether Shutdown is
// owed; the caller makes the call after releasing s.mu, since Shutdown may
// block in the driver.
func (s *Sampler) takeShutdownLocked() bool {
	if s.state != libReady {
		return false
	}
	s.state = libShutdown
	return true
}

func (s *Sampler) shutdown() error {
	if ret := guard0(s.lib.Shutdown); ret != nvml.SUCCESS {
		return nvmlError("shutdown", ret)
	}
	return nil
}

// initLibrary calls NVML Init and says what came of it. A failure is
// tried again at the next Sample (the driver may load after the hive
// started) and logged when it differs from the last one: an absent library
// (a machine without NVIDIA's driver) at info level, anything else, the
// driver not loaded included, as a warning naming the error. Without even a
// library handle there is no GPU data for good, logged at debug level.
func (s *Sampler) initLibrary() libState {
	if s.lib == nil {
		s.logger.Debug("nvml unavailable, no gpu data", "err", s.loadErr)
		return libUnavailable
	}
	ret := guard0(s.lib.Init)
	if ret == nvml.SUCCESS {
		if s.initErr != nvml.SUCCESS {
			s.logger.Info("nvml initialised after failing, reading gpus", "failed_with", nvml.ErrorString(s.initErr))
			s.initErr = nvml.SUCCESS
		}
		s.eventReasons = s.hasSymbol(eventReasonsSymbol)
		return libReady
	}
	if ret != s.initErr {
		s.initErr = ret
		err := nvmlError("init", ret)
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			s.logger.Info("nvml library not found, no gpu data; trying again each sample", "err", err)
		} else {
			s.logger.Warn("nvml init failed, no gpu data; trying again each sample", "err", err)
		}
	}
	return libRetry
}

// hasSymbol reports whether the loaded library exports name. Calling a
// symbol the driver lacks would crash the process, not return an error.
func (s *Sampler) hasSymbol(name string) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	ext := s.lib.Extensions()
	return ext != nil && ext.LookupSymbol(name) == nil
}

func (s *Sampler) readAll(ctx context.Context) ([]wire.GPU, error) {
	count, ret := guard(s.lib.DeviceGetCount)
	if ret != nvml.SUCCESS {
		return []wire.GPU{}, nvmlError("device count", ret)
	}
	if count == 0 {
		if !s.noDevices {
			s.noDevices = true
			s.logger.Debug("no gpus found")
		}
		return []wire.GPU{}, nil
	}
	if s.noDevices {
		s.logger.Info("gpus found", "count", count)
	}
	s.noDevices = false
	gpus := make([]wire.GPU, 0, count)
	var procs []Process
	for i := range count {
		if err := ctx.Err(); err != nil {
			return []wire.GPU{}, fmt.Errorf("gpu sample: %w", err)
		}
		g, p := s.readDevice(i)
		gpus = append(gpus, g)
		procs = append(procs, p...)
	}
	s.procMu.Lock()
	s.procs = procs
	s.procMu.Unlock()
	return gpus, nil
}

// readDevice reads GPU i and the processes holding memory on it. Fields the
// device cannot give stay nil; conditions that make the GPU unwell are
// collected into its HealthReason.
func (s *Sampler) readDevice(i int) (wire.GPU, []Process) {
	g := wire.GPU{Index: i, Health: wire.Healthy}
	var unwell []string
	dev, ret := guard(func() (nvml.Device, nvml.Return) { return s.lib.DeviceGetHandleByIndex(i) })
	if ret != nvml.SUCCESS || dev == nil {
		s.noteFailure(i, "handle", ret)
		g.Health, g.HealthReason = wire.Degraded, "unreachable: "+nvml.ErrorString(ret)
		return g, nil
	}
	s.clearFailure(i, "handle")
	r := &deviceReader{s: s, index: i}

	if v, ok := read(r, "uuid", dev.GetUUID); ok {
		g.UUID = v
	}
	if v, ok := read(r, "name", dev.GetName); ok {
		g.Name = v
	}
	if m, ok := read(r, "memory", dev.GetMemoryInfo); ok {
		used, total := m.Used, m.Total
		g.VRAMUsedBytes, g.VRAMTotalBytes = &used, &total
	}
	if u, ok := read(r, "utilization", dev.GetUtilizationRates); ok {
		v := float64(u.Gpu)
		g.UtilPercent = &v
	}
	if t, ok := read(r, "temperature", func() (uint32, nvml.Return) { return dev.GetTemperature(nvml.TEMPERATURE_GPU) }); ok {
		v := float64(t)
		g.TemperatureC = &v
	}
	if mw, ok := read(r, "power", dev.GetPowerUsage); ok {
		v := float64(mw) / 1000
		g.PowerW = &v
	}

	ecc := func() (uint64, nvml.Return) {
		return dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
	}
	if n, ok := read(r, "ecc errors", ecc); ok && n > 0 {
		unwell = append(unwell, fmt.Sprintf("%d uncorrected ECC errors", n))
	}
	clocks := dev.GetCurrentClocksThrottleReasons
	if s.eventReasons {
		clocks = dev.GetCurrentClocksEventReasons
	}
	if bits, ok := read(r, "clock reasons", clocks); ok {
		if why := slowdownNames(bits); why != "" {
			unwell = append(unwell, "clocks slowed: "+why)
		}
	}
	if st, ok := read(r, "retired pages", dev.GetRetiredPagesPendingStatus); ok && st == nvml.FEATURE_ENABLED {
		unwell = append(unwell, "retired pages pending")
	}
	if rows, ok := read(r, "remapped rows", func() (remap, nvml.Return) {
		_, _, pending, failed, ret := dev.GetRemappedRows()
		return remap{pending, failed}, ret
	}); ok {
		if rows.failed {
			unwell = append(unwell, "row remapping failed")
		}
		if rows.pending {
			unwell = append(unwell, "row remapping pending")
		}
	}
	if r.lost {
		unwell = append(unwell, "gpu is lost")
	}
	if len(unwell) > 0 {
		g.Health, g.HealthReason = wire.Degraded, strings.Join(unwell, "; ")
	}
	return g, readProcesses(r, dev, g)
}

type remap struct{ pending, failed bool }

// slowdownNames lists the unwell clock reasons set in bits, or "" if none.
func slowdownNames(bits uint64) string {
	var names []string
	for _, sd := range slowdowns {
		if bits&sd.bit != 0 {
			names = append(names, sd.name)
		}
	}
	return strings.Join(names, ", ")
}

// deviceReader carries what one device's reads share.
type deviceReader struct {
	s     *Sampler
	index int
	lost  bool // some call said the GPU has fallen off the bus
}

// read calls f and returns its value when NVML succeeded. On failure it
// notes the failure (logged when it changes) and returns false, so the
// field stays nil.
func read[T any](r *deviceReader, op string, f func() (T, nvml.Return)) (T, bool) {
	v, ret := guard(f)
	if ret != nvml.SUCCESS {
		if ret == nvml.ERROR_GPU_IS_LOST {
			r.lost = true
		}
		r.s.noteFailure(r.index, op, ret)
		var zero T
		return zero, false
	}
	r.s.clearFailure(r.index, op)
	return v, true
}

// noteFailure logs a device call's failure at debug level when it differs
// from the last one, so a field a device never supports is logged once, not
// every sample.
func (s *Sampler) noteFailure(index int, op string, ret nvml.Return) {
	key := fmt.Sprintf("%d/%s", index, op)
	if last, seen := s.failures[key]; seen && last == ret {
		return
	}
	s.failures[key] = ret
	s.logger.Debug("gpu field unavailable", "gpu", index, "field", op, "err", nvmlError(op, ret))
}

func (s *Sampler) clearFailure(index int, op string) {
	if len(s.failures) > 0 {
		delete(s.failures, fmt.Sprintf("%d/%s", index, op))
	}
}

// guard calls f, turning a panic into ERROR_FUNCTION_NOT_FOUND: go-nvml's
// mocks panic on a function that was not provided, and a binding that
// cannot reach a symbol must cost one field, not the process.
func guard[T any](f func() (T, nvml.Return)) (v T, ret nvml.Return) {
	defer func() {
		if recover() != nil {
			var zero T
			v, ret = zero, nvml.ERROR_FUNCTION_NOT_FOUND
		}
	}()
	return f()
}

func guard0(f func() nvml.Return) nvml.Return {
	_, ret := guard(func() (struct{}, nvml.Return) { return struct{}{}, f() })
	return ret
}

// nvmlError converts an NVML return code into an error wrapping ErrNVML.
func nvmlError(op string, ret nvml.Return) error {
	return fmt.Errorf("%w: %s: %s", ErrNVML, op, nvml.ErrorString(ret))
}
