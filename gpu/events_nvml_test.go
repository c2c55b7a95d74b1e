//go:build linux && cgo && nvml

package gpu

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/wire"
)

// eventDriver makes the dgxh100 mock deliver events: every device supports
// the wanted types, and EventSetWait returns what the test sends.
type eventDriver struct {
	ch         chan nvml.EventData
	mu         sync.Mutex
	registered map[int]uint64
	freed      int
}

func withEvents(t *testing.T, srv *server.Server) *eventDriver {
	t.Helper()
	d := &eventDriver{ch: make(chan nvml.EventData, 8), registered: map[int]uint64{}}
	set := &mock.EventSet{
		WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
			select { // the driver blocks up to ms for an event
			case ev := <-d.ch:
				return ev, nvml.SUCCESS
			case <-time.After(time.Duration(ms) * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { d.mu.Lock(); d.freed++; d.mu.Unlock(); return nvml.SUCCESS },
	}
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS }
	for i := range srv.Devices {
		dev := device(srv, i)
		dev.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeGpuUnavailableError | nvml.EventTypeGpuRecoveryAction | nvml.EventTypePState, nvml.SUCCESS
		}
		dev.RegisterEventsFunc = func(mask uint64, es nvml.EventSet) nvml.Return {
			if es != set {
				return nvml.ERROR_INVALID_ARGUMENT
			}
			d.mu.Lock()
			d.registered[i] = mask
			d.mu.Unlock()
			return nvml.SUCCESS
		}
	}
	return d
}

// setFieldAction makes device d report recovery action a through
// FI_DEV_GET_GPU_RECOVERY_ACTION.
func setFieldAction(d *server.Device, a nvml.DeviceGpuRecoveryAction) {
	d.GetFieldValuesFunc = func(vals []nvml.FieldValue) nvml.Return {
		for i := range vals {
			if vals[i].FieldId != nvml.FI_DEV_GET_GPU_RECOVERY_ACTION {
				vals[i].NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
				continue
			}
			vals[i].ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
			vals[i].Value = [8]byte{byte(a)}
			vals[i].NvmlReturn = uint32(nvml.SUCCESS)
		}
		return nvml.SUCCESS
	}
}

func startEvents(t *testing.T, lib nvml.Interface) (*Events, chan Event, *logRecorder) {
	t.Helper()
	got := make(chan Event, 8)
	rec, logger := newRecorder(t)
	e := NewEventsWithLibrary(lib, logger, func(ev Event) { got <- ev })
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return e, got, rec
}

func nextEvent(t *testing.T, got chan Event) Event {
	t.Helper()
	select {
	case ev := <-got:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event reported")
	}
	return Event{}
}

func TestXid79OnGPU3(t *testing.T) {
	srv := newServer(t)
	drv := withEvents(t, srv)
	setFieldAction(device(srv, 3), nvml.GPU_RECOVERY_ACTION_NODE_REBOOT)
	e, got, _ := startEvents(t, srv)
	if !e.Supported() {
		t.Fatal("events not supported on the mock")
	}
	drv.mu.Lock()
	for i := range 8 {
		if drv.registered[i] != wantedEvents {
			t.Errorf("gpu %d registered mask %#x, want %#x (no PState)", i, drv.registered[i], wantedEvents)
		}
	}
	drv.mu.Unlock()

	drv.ch <- nvml.EventData{Device: srv.Devices[3], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	ev := nextEvent(t, got)
	if ev.Index != 3 || ev.UUID != readingFor(3).uuid || ev.Xid == nil || *ev.Xid != 79 || ev.RecoveryAction != RecoveryNodeReboot {
		t.Fatalf("event %+v, want Xid 79 on gpu 3 with node_reboot", ev)
	}

	s, _ := newSampler(t, srv)
	gpus := sample(t, s)
	health, reason := e.Apply(gpus)
	g := gpus[3]
	if g.Xid == nil || *g.Xid != 79 || g.XidAtMs == 0 || g.RecoveryAction != RecoveryNodeReboot || g.Health != wire.Unhealthy {
		t.Fatalf("gpu 3 %s xid=%v at=%d action=%q, want xid 79, unhealthy, node_reboot", gpuString(g), g.Xid, g.XidAtMs, g.RecoveryAction)
	}
	if !strings.Contains(g.HealthReason, "Xid 79: GPU has fallen off the bus") {
		t.Errorf("gpu 3 reason %q", g.HealthReason)
	}
	for i, other := range gpus {
		if i != 3 && (other.Xid != nil || other.Health != wire.Healthy || other.RecoveryAction != "") {
			t.Errorf("gpu %d touched: %s", i, gpuString(other))
		}
	}
	if health != wire.Degraded || reason != "gpu 3: Xid 79: GPU has fallen off the bus, recovery node_reboot" {
		t.Errorf("hive verdict %s %q", health, reason)
	}
}

func TestApplicationXidLeavesHardwareHealthy(t *testing.T) {
	srv := newServer(t)
	drv := withEvents(t, srv)
	e, got, _ := startEvents(t, srv)
	drv.ch <- nvml.EventData{Device: srv.Devices[1], EventType: nvml.EventTypeXidCriticalError, EventData: 13}
	ev := nextEvent(t, got)
	if ev.Xid == nil || *ev.Xid != 13 || ev.RecoveryAction != "" {
		t.Fatalf("event %+v, want Xid 13 and no field action (the mock's device has no field)", ev)
	}
	s, _ := newSampler(t, srv)
	gpus := sample(t, s)
	health, reason := e.Apply(gpus)
	g := gpus[1]
	if g.Xid == nil || *g.Xid != 13 || g.Health != wire.Healthy || g.HealthReason != "" || g.RecoveryAction != RecoveryNone {
		t.Fatalf("gpu 1 %s action=%q, want xid 13 recorded, healthy, recovery none", gpuString(g), g.RecoveryAction)
	}
	if health != wire.Healthy || reason != "" {
		t.Fatalf("hive verdict %s %q, want healthy", health, reason)
	}
}

func TestRecoveryActionAndUnavailableEvents(t *testing.T) {
	srv := newServer(t)
	drv := withEvents(t, srv)
	e, got, _ := startEvents(t, srv)
	drv.ch <- nvml.EventData{Device: srv.Devices[5], EventType: nvml.EventTypeGpuRecoveryAction, EventData: uint64(nvml.GPU_RECOVERY_ACTION_DRAIN_AND_RESET)}
	nextEvent(t, got)
	drv.ch <- nvml.EventData{Device: srv.Devices[6], EventType: nvml.EventTypeGpuUnavailableError}
	nextEvent(t, got)
	s, _ := newSampler(t, srv)
	gpus := sample(t, s)
	health, reason := e.Apply(gpus)
	if gpus[5].RecoveryAction != RecoveryDrainAndReset || gpus[5].Xid != nil {
		t.Errorf("gpu 5 action %q xid %v, want drain_and_reset and no xid", gpus[5].RecoveryAction, gpus[5].Xid)
	}
	if gpus[6].Health != wire.Unhealthy || !strings.Contains(reason, "gpu 6: GPU unavailable") || health != wire.Degraded {
		t.Errorf("gpu 6 %s; hive %s %q", gpuString(gpus[6]), health, reason)
	}
}

func TestEventsDegradeWithoutDriverSupport(t *testing.T) {
	tests := []struct {
		name  string
		spoil func(srv *server.Server)
	}{
		{"no event set", func(srv *server.Server) {
			srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED }
		}},
		{"event set call missing", func(srv *server.Server) { srv.EventSetCreateFunc = nil }},
		{"no gpu supports xid events", func(srv *server.Server) {
			withEvents(t, srv)
			for i := range srv.Devices {
				device(srv, i).GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return nvml.EventTypePState, nvml.SUCCESS }
			}
		}},
		{"registration refused", func(srv *server.Server) {
			withEvents(t, srv)
			for i := range srv.Devices {
				device(srv, i).GetSupportedEventTypesFunc = nil
				device(srv, i).RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t)
			tt.spoil(srv)
			e, _, rec := startEvents(t, srv)
			if e.Supported() {
				t.Fatal("Supported on a driver without events")
			}
			if n := rec.count(-4); n != 1 { // slog.LevelDebug
				t.Errorf("logged %d debug lines, want one: %q", n, rec.messages())
			}
			if rec.count(0)+rec.count(4)+rec.count(8) != 0 {
				t.Errorf("logged above debug: %q", rec.messages())
			}
			e.Stop()
			if len(srv.InitCalls()) != len(srv.ShutdownCalls()) {
				t.Errorf("Init %d times, Shutdown %d", len(srv.InitCalls()), len(srv.ShutdownCalls()))
			}
			gpus := []wire.GPU{{Index: 0, UUID: "u", Health: wire.Healthy}}
			if h, r := e.Apply(gpus); h != wire.Healthy || r != "" || !reflect.DeepEqual(gpus[0], wire.GPU{Index: 0, UUID: "u", Health: wire.Healthy}) {
				t.Errorf("Apply without events changed %v: %s %q", gpus, h, r)
			}
		})
	}
	e := NewEventsWithLibrary(nil, nil, nil)
	if err := e.Start(context.Background()); err != nil || e.Supported() {
		t.Fatalf("nil library: %v supported=%v", err, e.Supported())
	}
	e.Stop()
}

func TestEventsLifecycle(t *testing.T) {
	srv := newServer(t)
	withEvents(t, srv)
	e := NewEventsWithLibrary(srv, nil, nil)
	e.Stop()
	if err := e.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("Start after Stop: %v", err)
	}
	e = NewEventsWithLibrary(srv, nil, nil)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = e.Start(context.Background()) }()
	go func() { defer wg.Done(); e.Stop() }()
	go func() { defer wg.Done(); _ = e.Supported(); e.Apply([]wire.GPU{{Index: 0}}) }()
	wg.Wait()
	e.Stop()
	e = NewEventsWithLibrary(srv, nil, nil)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	e.Stop()
	e.Stop()
	if len(srv.InitCalls()) != len(srv.ShutdownCalls()) {
		t.Errorf("Init %d times, Shutdown %d", len(srv.InitCalls()), len(srv.ShutdownCalls()))
	}
}

func TestProcessesGiveEachWorkerItsVRAM(t *testing.T) {
	srv := newServer(t)
	procs := map[int]struct{ compute, graphics []nvml.ProcessInfo }{
		0: {compute: []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 4 * gib}, {Pid: 300, UsedGpuMemory: valueNotAvailable}}},
		1: {compute: []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 2 * gib}}},
		2: {compute: []nvml.ProcessInfo{{Pid: 200, UsedGpuMemory: gib}}, graphics: []nvml.ProcessInfo{{Pid: 200, UsedGpuMemory: gib / 2}, {Pid: 400, UsedGpuMemory: gib / 4}}},
	}
	for i, p := range procs {
		d := device(srv, i)
		d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return p.compute, nvml.SUCCESS }
		d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return p.graphics, nvml.SUCCESS }
	}
	device(srv, 7).GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED }
	s, _ := newSampler(t, srv)
	if s.Processes() != nil {
		t.Fatal("processes before the first sample")
	}
	sample(t, s)
	u := func(n uint64) *uint64 { return &n }
	want := map[int]Usage{
		100: {UsedBytes: u(6 * gib), GPUUUIDs: []string{readingFor(0).uuid, readingFor(1).uuid}},
		200: {UsedBytes: u(gib), GPUUUIDs: []string{readingFor(2).uuid}},
		300: {GPUUUIDs: []string{readingFor(0).uuid}},
		400: {UsedBytes: u(gib / 4), GPUUUIDs: []string{readingFor(2).uuid}},
	}
	got := ByPID(s.Processes())
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("by pid:\n got %s\nwant %s", usageString(got), usageString(want))
	}
}

func usageString(m map[int]Usage) string {
	var b strings.Builder
	for pid := 0; pid < 1000; pid++ {
		if u, ok := m[pid]; ok {
			used := "nil"
			if u.UsedBytes != nil {
				used = fmt.Sprint(*u.UsedBytes)
			}
			fmt.Fprintf(&b, "%d:%s%v ", pid, used, u.GPUUUIDs)
		}
	}
	return b.String()
}

// TestStopNotHeldByAStuckInit: Start is stuck in the driver's Init; Stop and
// Supported still return, and the registration finishing afterwards is
// undone (the set freed, NVML shut down), not left waiting.
func TestStopNotHeldByAStuckInit(t *testing.T) {
	srv := newServer(t)
	d := withEvents(t, srv)
	entered, release := make(chan struct{}), make(chan struct{})
	srv.InitFunc = func() nvml.Return {
		close(entered)
		<-release
		return nvml.SUCCESS
	}
	srv.ShutdownFunc = func() nvml.Return { return nvml.SUCCESS }
	e := NewEventsWithLibrary(srv, nil, nil)
	started := make(chan error, 1)
	go func() { started <- e.Start(context.Background()) }()
	receive(t, entered, "Start to reach the driver's Init")
	stopped := make(chan bool, 1)
	go func() { e.Stop(); stopped <- e.Supported() }()
	if receive(t, stopped, "Stop and Supported while Init hangs") {
		t.Error("Supported while Start had not registered")
	}
	close(release)
	if err := receive(t, started, "Start to return"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	d.mu.Lock()
	freed := d.freed
	d.mu.Unlock()
	if freed != 1 || len(srv.ShutdownCalls()) != 1 || e.Supported() {
		t.Errorf("after a Stop during Start: set freed %d times, Shutdown %d times, supported %v; want 1, 1, false",
			freed, len(srv.ShutdownCalls()), e.Supported())
	}
}
