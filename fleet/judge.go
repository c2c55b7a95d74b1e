package fleet

import (
	"slices"
	"strings"

	"github.com/rbee/heartbeat/wire"
)

// Severity ranks how much an entry needs an operator: views sort the highest
// first. The zero value is Fine.
type Severity int

// Severity values, least first.
const (
	Fine      Severity = iota
	Degraded           // degraded health, or a GPU that is
	Unhealthy          // unhealthy health, or a GPU that is, or one whose driver asks for a reset
	NotAlive           // disconnected or stalled
)

// String returns the severity's name: fine, degraded, unhealthy or not_alive.
func (s Severity) String() string {
	switch s {
	case Degraded:
		return "degraded"
	case Unhealthy:
		return "unhealthy"
	case NotAlive:
		return "not_alive"
	}
	return "fine"
}

func healthSeverity(h wire.Health) Severity {
	switch h {
	case wire.Unhealthy:
		return Unhealthy
	case wire.Degraded:
		return Degraded
	}
	return Fine
}

// WorkerSeverity returns how much w needs an operator: NotAlive when its
// liveness is not alive, else its health's rank.
func WorkerSeverity(w *wire.WorkerEntry) Severity {
	if w.Liveness.OrAlive() != wire.LivenessAlive {
		return NotAlive
	}
	return healthSeverity(w.Health)
}

// HiveSeverity returns how much h needs an operator: NotAlive when its
// liveness is not alive, else the worst of its health and its GPUs' (a GPU
// whose driver recommends a recovery action counts as unhealthy).
func HiveSeverity(h *wire.HiveEntry) Severity {
	if h.Liveness.OrAlive() != wire.LivenessAlive {
		return NotAlive
	}
	s := healthSeverity(h.Health)
	for i := range h.GPUs {
		s = max(s, GPUSeverity(&h.GPUs[i]))
	}
	return s
}

// GPUSeverity returns the rank of g's health; a recovery action other than
// none makes it Unhealthy.
func GPUSeverity(g *wire.GPU) Severity {
	s := healthSeverity(g.Health)
	if NeedsRecovery(g) {
		s = max(s, Unhealthy)
	}
	return s
}

// NeedsRecovery reports whether g's driver recommends an action (a reset, a
// reboot, a drain).
func NeedsRecovery(g *wire.GPU) bool {
	return g.RecoveryAction != "" && g.RecoveryAction != "none"
}

// ModelState is a worker's share in its model's summary.
type ModelState string

// ModelState values.
const (
	ModelReady   ModelState = "ready"   // alive, not unhealthy, status ready
	ModelBusy    ModelState = "busy"    // alive, not unhealthy, status busy
	ModelProblem ModelState = "problem" // not alive, or unhealthy
	ModelOther   ModelState = "other"   // starting, draining, stopping or stopped
)

// ModelStates lists every ModelState, in the order views show them.
var ModelStates = []ModelState{ModelReady, ModelBusy, ModelProblem, ModelOther}

// StateOf returns w's share in its model's summary.
func StateOf(w *wire.WorkerEntry) ModelState {
	if WorkerSeverity(w) >= Unhealthy {
		return ModelProblem
	}
	switch w.Status {
	case wire.StatusReady:
		return ModelReady
	case wire.StatusBusy:
		return ModelBusy
	}
	return ModelOther
}

// NaturalCompare compares a and b with runs of digits compared as numbers,
// so that sim-2 sorts before sim-10. It returns -1, 0 or +1.
func NaturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if len(na) != len(nb) {
				return sign(len(na) - len(nb))
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			if da != db { // equal numbers, fewer leading zeros first
				return sign(da - db)
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return sign(int(a[0]) - int(b[0]))
		}
		a, b = a[1:], b[1:]
	}
	return sign(len(a) - len(b))
}

// NaturalLess reports whether a sorts before b in natural order.
func NaturalLess(a, b string) bool { return NaturalCompare(a, b) < 0 }

func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

// CompareWorkers orders workers problems first (highest severity), then by
// hive and worker ID in natural order.
func CompareWorkers(a, b *wire.WorkerEntry) int {
	if sa, sb := WorkerSeverity(a), WorkerSeverity(b); sa != sb {
		return sign(int(sb) - int(sa))
	}
	if c := NaturalCompare(a.HiveID, b.HiveID); c != 0 {
		return c
	}
	return NaturalCompare(a.WorkerID, b.WorkerID)
}

// CompareHives orders hives problems first, then by ID in natural order.
func CompareHives(a, b *wire.HiveEntry) int {
	if sa, sb := HiveSeverity(a), HiveSeverity(b); sa != sb {
		return sign(int(sb) - int(sa))
	}
	return NaturalCompare(a.HiveID, b.HiveID)
}

// ModelSummary counts one model's workers by ModelState.
type ModelSummary struct {
	Model   string `json:"model"`
	Ready   int    `json:"ready"`
	Busy    int    `json:"busy"`
	Problem int    `json:"problem"`
	Other   int    `json:"other"`
}

// Summarize returns the per-model summary of workers, models with a problem
// or no ready worker first, then in natural order. A worker without a model
// counts under "".
func Summarize(workers []*wire.WorkerEntry) []ModelSummary {
	idx := map[string]int{}
	out := []ModelSummary{}
	for _, w := range workers {
		i, ok := idx[w.ModelID]
		if !ok {
			i = len(out)
			idx[w.ModelID] = i
			out = append(out, ModelSummary{Model: w.ModelID})
		}
		switch StateOf(w) {
		case ModelReady:
			out[i].Ready++
		case ModelBusy:
			out[i].Busy++
		case ModelProblem:
			out[i].Problem++
		default:
			out[i].Other++
		}
	}
	rank := func(m ModelSummary) int {
		switch {
		case m.Ready+m.Busy == 0:
			return 0
		case m.Problem > 0:
			return 1
		}
		return 2
	}
	slices.SortFunc(out, func(a, b ModelSummary) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return NaturalCompare(a.Model, b.Model)
	})
	return out
}
