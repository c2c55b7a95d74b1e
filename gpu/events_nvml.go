//go:build linux && cgo && nvml

package gpu

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/rbee/heartbeat/lifecycle"
)

// wantedEvents are the event types the hive waits for: Xid critical
// errors, and where the driver has them, a GPU becoming unavailable and a
// changed recovery action.
const wantedEvents = nvml.EventTypeXidCriticalError | nvml.EventTypeGpuUnavailableError | nvml.EventTypeGpuRecoveryAction

// waitMs bounds one EventSetWait, so that Stop is noticed within it.
const waitMs = 250

// Events waits for NVML device events in its own goroutine and keeps the
// latest per GPU, for Apply to put into the beats. Its methods may be called
// concurrently; it keeps the lifecycle contract (package lifecycle).
type Events struct {
	events
	lib     nvml.Interface
	loadErr error
	logger  *slog.Logger
	onEvent func(Event)

	mu        sync.Mutex
	supported bool
	started   bool
	stopped   bool
	set       nvml.EventSet
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// NewEvents returns an Events backed by the system's NVML library. onEvent,
// if set, is called from the waiting goroutine after each event is recorded
// (the hive beats at once from it); it must return promptly.
func NewEvents(logger *slog.Logger, onEvent func(Event)) *Events {
	lib, err := loadLibrary()
	e := NewEventsWithLibrary(lib, logger, onEvent)
	e.loadErr = err
	return e
}

// NewEventsWithLibrary is NewEvents reading through lib, such as go-nvml's
// mock. Events calls lib.Init on Start and lib.Shutdown on Stop (NVML counts
// its initialisations, so this shares the library with a Sampler).
func NewEventsWithLibrary(lib nvml.Interface, logger *slog.Logger, onEvent func(Event)) *Events {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Events{lib: lib, logger: logger.With("component", "gpu-events"), onEvent: onEvent}
}

// Supported reports whether Start registered events on at least one GPU.
func (e *Events) Supported() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.supported
}

// Start registers the wanted events on every GPU that supports them and
// waits for them until Stop or ctx ends. Without a library, a driver or a GPU
// with event support it logs once at debug level that GPU faults are seen
// by polling only, and returns nil. A second Start, or Start after Stop,
// returns an error wrapping lifecycle.ErrStarted. The NVML calls are made
// outside the lock that Stop and Supported take, so a driver that hangs in
// them holds neither up.
func (e *Events) Start(ctx context.Context) error {
	e.mu.Lock()
	if e.started || e.stopped {
		e.mu.Unlock()
		return fmt.Errorf("gpu events: %w", lifecycle.ErrStarted)
	}
	e.started = true
	e.mu.Unlock()

	set, why := e.register()
	if why != "" {
		e.logger.Debug("gpu events unavailable, gpu faults seen by polling only", "reason", why)
		return nil
	}
	e.mu.Lock()
	if e.stopped { // Stop came while registering: nothing to wait for
		e.mu.Unlock()
		e.release(set)
		return nil
	}
	e.supported, e.set = true, set
	ctx, e.cancel = context.WithCancel(ctx)
	e.wg.Add(1)
	go e.wait(ctx, set)
	e.mu.Unlock()
	return nil
}

// register initialises NVML and registers the events; it returns the event
// set, or why events cannot be had (NVML then shut down again).
func (e *Events) register() (nvml.EventSet, string) {
	if e.lib == nil {
		return nil, fmt.Sprintf("no nvml library: %v", e.loadErr)
	}
	if ret := guard0(e.lib.Init); ret != nvml.SUCCESS {
		return nil, nvmlError("init", ret).Error()
	}
	set, ret := guard(e.lib.EventSetCreate)
	if ret != nvml.SUCCESS || set == nil {
		e.shutdown()
		return nil, nvmlError("event set create", ret).Error()
	}
	count, ret := guard(e.lib.DeviceGetCount)
	if ret != nvml.SUCCESS {
		e.release(set)
		return nil, nvmlError("device count", ret).Error()
	}
	registered, lastRet := 0, nvml.ERROR_NOT_SUPPORTED
	for i := range count {
		dev, ret := guard(func() (nvml.Device, nvml.Return) { return e.lib.DeviceGetHandleByIndex(i) })
		if ret != nvml.SUCCESS || dev == nil {
			continue
		}
		mask := uint64(wantedEvents)
		if sup, ret := guard(dev.GetSupportedEventTypes); ret == nvml.SUCCESS {
			mask &= sup
		}
		if mask == 0 {
			continue
		}
		if ret := guard0(func() nvml.Return { return dev.RegisterEvents(mask, set) }); ret == nvml.SUCCESS {
			registered++
		} else {
			lastRet = ret
		}
	}
	if registered == 0 {
		e.release(set)
		return nil, "no gpu supports xid events: " + nvmlError("register events", lastRet).Error()
	}
	return set, ""
}

// release frees set and shuts NVML down; no lock is held.
func (e *Events) release(set nvml.EventSet) {
	_ = guard0(set.Free)
	e.shutdown()
}

func (e *Events) shutdown() {
	if ret := guard0(e.lib.Shutdown); ret != nvml.SUCCESS {
		e.logger.Warn("nvml shutdown failed", "err", nvmlError("shutdown", ret))
	}
}

// Stop ends waiting, frees the event set and shuts NVML down. It is safe
// before Start and more than once.
func (e *Events) Stop() {
	e.mu.Lock()
	e.stopped = true
	cancel := e.cancel
	e.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	e.wg.Wait()
	e.mu.Lock()
	set := e.set
	e.set = nil
	e.mu.Unlock()
	if set != nil {
		e.release(set)
	}
}

func (e *Events) wait(ctx context.Context, set nvml.EventSet) {
	defer e.wg.Done()
	var lastErr nvml.Return = nvml.SUCCESS
	for ctx.Err() == nil {
		data, ret := guard(func() (nvml.EventData, nvml.Return) { return set.Wait(waitMs) })
		switch ret {
		case nvml.SUCCESS:
			lastErr = nvml.SUCCESS
			e.handle(data)
		case nvml.ERROR_TIMEOUT:
		default:
			if ret != lastErr {
				e.logger.Warn("gpu event wait failed", "err", nvmlError("event set wait", ret))
				lastErr = ret
			}
			select { // a failing wait returns at once: do not spin on it
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// handle records one event and passes it on.
func (e *Events) handle(data nvml.EventData) {
	ev := Event{Index: -1, At: time.Now()}
	dev := data.Device
	if dev != nil {
		if i, ret := guard(dev.GetIndex); ret == nvml.SUCCESS {
			ev.Index = i
		}
		if u, ret := guard(dev.GetUUID); ret == nvml.SUCCESS {
			ev.UUID = u
		}
	}
	switch {
	case data.EventType&nvml.EventTypeXidCriticalError != 0:
		x := int(data.EventData)
		ev.Xid = &x
		ev.RecoveryAction = fieldAction(dev)
	case data.EventType&nvml.EventTypeGpuUnavailableError != 0:
		ev.Unavailable = true
		ev.RecoveryAction = fieldAction(dev)
	case data.EventType&nvml.EventTypeGpuRecoveryAction != 0:
		ev.RecoveryAction, _ = RecoveryAction(data.EventData)
	default:
		return
	}
	e.note(ev)
	attrs := []any{"gpu", ev.Index, "uuid", ev.UUID, "recovery_action", ev.RecoveryAction}
	if ev.Xid != nil {
		info := ClassifyXid(*ev.Xid)
		attrs = append(attrs, "xid", *ev.Xid, "xid_name", info.Name, "hardware", info.Hardware)
	}
	e.logger.Warn("gpu event", attrs...)
	if e.onEvent != nil {
		e.onEvent(ev)
	}
}

// fieldAction reads the driver's recommended recovery action
// (FI_DEV_GET_GPU_RECOVERY_ACTION, R555 and later); "" where the driver or
// the GPU does not have the field.
func fieldAction(dev nvml.Device) string {
	if dev == nil {
		return ""
	}
	vals := []nvml.FieldValue{{FieldId: nvml.FI_DEV_GET_GPU_RECOVERY_ACTION}}
	if ret := guard0(func() nvml.Return { return dev.GetFieldValues(vals) }); ret != nvml.SUCCESS || nvml.Return(vals[0].NvmlReturn) != nvml.SUCCESS {
		return ""
	}
	a, _ := RecoveryAction(fieldUint(vals[0]))
	return a
}

// fieldUint reads an integer field value; NVML writes it in the machine's
// byte order, little-endian on every platform the driver supports.
func fieldUint(v nvml.FieldValue) uint64 {
	switch nvml.ValueType(v.ValueType) {
	case nvml.VALUE_TYPE_UNSIGNED_INT, nvml.VALUE_TYPE_SIGNED_INT:
		return uint64(binary.LittleEndian.Uint32(v.Value[:4]))
	case nvml.VALUE_TYPE_UNSIGNED_SHORT:
		return uint64(binary.LittleEndian.Uint16(v.Value[:2]))
	default:
		return binary.LittleEndian.Uint64(v.Value[:])
	}
}

// note folds one event into the state.
func (e *events) note(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.byID == nil {
		e.byID = map[string]*record{}
	}
	k := gpuKey(ev.Index, ev.UUID)
	r := e.byID[k]
	if r == nil {
		r = &record{}
		e.byID[k] = r
	}
	if ev.Xid != nil {
		x := *ev.Xid
		r.xid, r.at = &x, ev.At
		r.action = ClassifyXid(x).Action
	}
	if ev.Unavailable {
		r.unavailable, r.at = true, ev.At
	}
	if ev.RecoveryAction != "" {
		r.action = ev.RecoveryAction
		if r.at.IsZero() {
			r.at = ev.At
		}
	}
}
