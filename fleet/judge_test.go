package fleet_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/rbee/heartbeat/fleet"
	"github.com/rbee/heartbeat/wire"
)

func TestNaturalCompare(t *testing.T) {
	tests := []struct {
		name string
		a, b string
		want int
	}{
		{"numbers", "sim-2", "sim-10", -1},
		{"equal", "sim-10", "sim-10", 0},
		{"prefix", "sim", "sim-1", -1},
		{"letters", "a", "b", -1},
		{"leading zeros equal value", "w01", "w1", 1},
		{"long numbers", "n99999999999999999999", "n100000000000000000000", -1},
		{"mixed", "h2-w10", "h2-w9", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := fleet.NaturalCompare(tc.a, tc.b); got != tc.want {
				t.Errorf("NaturalCompare(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
			}
			if got := fleet.NaturalCompare(tc.b, tc.a); got != -tc.want {
				t.Errorf("NaturalCompare(%q, %q) = %d, want %d", tc.b, tc.a, got, -tc.want)
			}
		})
	}
}

func ExampleNaturalLess() {
	names := []string{"sim-10", "sim-1", "sim-2"}
	slices.SortFunc(names, fleet.NaturalCompare)
	fmt.Println(names)
	// Output: [sim-1 sim-2 sim-10]
}

func TestCompareWorkersProblemsFirst(t *testing.T) {
	ws := []*wire.WorkerEntry{
		worker("h", "sim-10", "m", wire.StatusReady, "", wire.Healthy),
		worker("h", "sim-2", "m", wire.StatusReady, "", wire.Healthy),
		worker("h", "sim-3", "m", wire.StatusReady, "", wire.Degraded),
		worker("h", "sim-11", "m", wire.StatusBusy, wire.LivenessDisconnected, wire.Healthy),
		worker("h", "sim-12", "m", wire.StatusReady, "", wire.Unhealthy),
	}
	slices.SortFunc(ws, fleet.CompareWorkers)
	var got []string
	for _, w := range ws {
		got = append(got, w.WorkerID)
	}
	want := []string{"sim-11", "sim-12", "sim-3", "sim-2", "sim-10"}
	if !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

func TestHiveSeverity(t *testing.T) {
	h := &wire.HiveEntry{}
	h.HiveID, h.Health = "h", wire.Healthy
	h.GPUs = []wire.GPU{{Index: 0}, {Index: 1, Xid: ptr(79), RecoveryAction: "gpu_reset"}}
	if s := fleet.HiveSeverity(h); s != fleet.Unhealthy {
		t.Errorf("hive with a GPU needing a reset: %v, want unhealthy", s)
	}
	h.GPUs[1].RecoveryAction = "none"
	if s := fleet.HiveSeverity(h); s != fleet.Fine {
		t.Errorf("hive with an old Xid and no action: %v, want fine", s)
	}
	h.Liveness = wire.LivenessDisconnected
	if s := fleet.HiveSeverity(h); s != fleet.NotAlive {
		t.Errorf("disconnected hive: %v, want not_alive", s)
	}
}

func TestSummarize(t *testing.T) {
	got := fleet.Summarize([]*wire.WorkerEntry{
		worker("h", "1", "llama", wire.StatusReady, "", wire.Healthy),
		worker("h", "2", "llama", wire.StatusBusy, "", wire.Healthy),
		worker("h", "3", "qwen", wire.StatusReady, wire.LivenessStalled, wire.Healthy),
		worker("h", "4", "mistral", wire.StatusReady, "", wire.Healthy),
		worker("h", "5", "mistral", wire.StatusDraining, "", wire.Unhealthy),
	})
	want := []fleet.ModelSummary{
		{Model: "qwen", Problem: 1},
		{Model: "mistral", Ready: 1, Problem: 1},
		{Model: "llama", Ready: 1, Busy: 1},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
}
