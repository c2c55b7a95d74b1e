//go:build linux && cgo && nvml

package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/rbee/heartbeat/gpu"
	"github.com/rbee/heartbeat/internal/agenttest"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// mockGPUs is go-nvml's DGX H100 mock with events: every GPU supports Xid
// events, EventSetWait returns what the test sends, GPU 3 has the driver's
// recovery-action field, and a process 4242 holds memory on GPUs 0 and 1.
func mockGPUs(t *testing.T) (*server.Server, chan nvml.EventData) {
	t.Helper()
	srv := dgxh100.New()
	events := make(chan nvml.EventData, 4)
	set := &mock.EventSet{
		WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
			select { // the driver blocks up to ms for an event
			case ev := <-events:
				return ev, nvml.SUCCESS
			case <-time.After(time.Duration(ms) * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS }
	for i, d := range srv.Devices {
		dev := d.(*server.Device)
		dev.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return nvml.EventTypeXidCriticalError, nvml.SUCCESS }
		dev.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
		var procs []nvml.ProcessInfo
		if i < 2 {
			procs = []nvml.ProcessInfo{{Pid: 4242, UsedGpuMemory: 10 << 30}}
		}
		dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return procs, nvml.SUCCESS }
		dev.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
	}
	srv.Devices[3].(*server.Device).GetFieldValuesFunc = func(vals []nvml.FieldValue) nvml.Return {
		vals[0].ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
		vals[0].Value = [8]byte{byte(nvml.GPU_RECOVERY_ACTION_NODE_REBOOT)}
		vals[0].NvmlReturn = uint32(nvml.SUCCESS)
		return nvml.SUCCESS
	}
	return srv, events
}

// TestHiveXidEventBeatsAtOnce runs rbee hive on the DGX H100 mock with a
// 15-minute interval (its 45-minute TTL stays under the queen's 1 h
// ceiling), so that only an immediate beat can bring a GPU event to the
// registry: an application Xid (13) leaves the hive healthy, Xid 79
// on GPU 3 makes it degraded naming the GPU, the Xid and the driver's
// recovery action. The worker with pid 4242 gets its GPU memory in the view.
func TestHiveXidEventBeatsAtOnce(t *testing.T) {
	sys := agenttest.Start(t)
	srv, events := mockGPUs(t)
	hiveStats = func(ctx context.Context, interval time.Duration, log *slog.Logger) (*statsSource, error) {
		s := &statsSource{gpus: gpu.NewWithLibrary(srv, log), log: log}
		s.events = gpu.NewEventsWithLibrary(srv, log, func(gpu.Event) { s.eventBeat() })
		return s.start(ctx, interval)
	}
	t.Cleanup(func() { hiveStats = startStats })

	ctx, cancel := context.WithCancel(context.Background())
	stderr := &testutil.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"hive", "--nats-url", sys.URL, "--hive-id", "dgx", "--interval", "15m", "--log-level", "debug"},
			strings.NewReader(""), &testutil.Buffer{}, stderr)
	}()
	t.Cleanup(func() { cancel(); <-done })
	agenttest.CheckFor(t, 10*time.Second, func() error {
		_, err := sys.Hive("dgx") // subscribed to its workers before its first beat
		return err
	})
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan error, 1)
	go func() {
		wdone <- runWorker(&env{ctx: wctx, stdin: strings.NewReader(""), stdout: &testutil.Buffer{}, stderr: &testutil.Buffer{}},
			[]string{"--nats-url", sys.URL, "--hive-id", "dgx", "--worker-id", "w1", "--interval", "15m", "--pid", "4242"})
	}()
	t.Cleanup(func() { wcancel(); <-wdone })

	var seq uint64
	hiveIs := func(what string, ok func(h *wire.HiveEntry) bool) {
		t.Helper()
		agenttest.CheckFor(t, 10*time.Second, func() error {
			h, err := sys.Hive("dgx")
			if err != nil {
				return fmt.Errorf("want %s: %v; hive log:\n%s", what, err, stderr)
			}
			if !ok(h) || h.Seq <= seq {
				return fmt.Errorf("want %s in a beat after seq %d: seq %d health %s %q gpus %d workers %+v", what, seq, h.Seq, h.Health, h.HealthReason, len(h.GPUs), h.Workers)
			}
			seq = h.Seq
			return nil
		})
	}
	hiveIs("8 GPUs and worker w1", func(h *wire.HiveEntry) bool {
		return len(h.GPUs) == 8 && len(h.Workers) == 1 && h.Health == wire.Healthy &&
			(h.Workers[0].VRAMUsedBytes != nil && *h.Workers[0].VRAMUsedBytes == 20<<30 && len(h.Workers[0].GPUUUIDs) == 2)
	})

	events <- nvml.EventData{Device: srv.Devices[1], EventType: nvml.EventTypeXidCriticalError, EventData: 13}
	hiveIs("still healthy after an application Xid", func(h *wire.HiveEntry) bool {
		return h.Health == wire.Healthy && h.GPUs[1].Health == wire.Healthy && (h.GPUs[1].Xid != nil && *h.GPUs[1].Xid == 13)
	})

	events <- nvml.EventData{Device: srv.Devices[3], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	hiveIs("degraded by Xid 79 on GPU 3", func(h *wire.HiveEntry) bool {
		return h.Health == wire.Degraded && strings.Contains(h.HealthReason, "gpu 3: Xid 79: GPU has fallen off the bus, recovery node_reboot") &&
			h.GPUs[3].Health == wire.Unhealthy &&
			(h.GPUs[3].Xid != nil && *h.GPUs[3].Xid == 79 && h.GPUs[3].RecoveryAction == "node_reboot" && h.GPUs[3].XidAtMs > 0)
	})
}
