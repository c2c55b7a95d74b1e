package wire

import (
	"fmt"
	"math"
	"slices"

	"github.com/rbee/heartbeat/subjects"
)

// Limits on payload values; a beat beyond them is ErrInvalid.
const (
	MaxInstanceIDLen = 64
	MaxTextLen       = 256  // model_id, device, version, hostname, names, health_reason
	MaxURLLen        = 2048 // url
	MaxGPUs          = 64
	MaxHiveWorkers   = 1024
	MinIntervalMs    = 10
	MaxIntervalMs    = 3_600_000
	// MaxSeq keeps seq exact in every reader (JavaScript numbers are exact to
	// 2^53).
	MaxSeq = 1 << 53
	// MaxTimeMs bounds sent_at_ms: exact in every reader, and far enough
	// from the int64 limits that the difference of two such times cannot
	// overflow.
	MaxTimeMs = 1 << 53
)

// SkewMs returns receivedAtMs − sentAtMs, the clock skew plus transit time of
// a beat, saturated to [−MaxTimeMs, MaxTimeMs]: it never overflows, whatever
// the two clocks say.
func SkewMs(receivedAtMs, sentAtMs int64) int64 {
	d := receivedAtMs - sentAtMs
	// The subtraction overflowed when the operands' signs differ and the
	// result's sign is not receivedAtMs's.
	if (receivedAtMs < 0) != (sentAtMs < 0) && (d < 0) != (receivedAtMs < 0) {
		if receivedAtMs < 0 {
			return -MaxTimeMs
		}
		return MaxTimeMs
	}
	return max(-MaxTimeMs, min(d, MaxTimeMs))
}

// RecoveryActions are the values GPU.RecoveryAction may take besides empty
// (NVML's recommended action after an Xid).
var RecoveryActions = []string{"none", "gpu_reset", "node_reboot", "drain_p2p", "drain_and_reset"}

func validRecoveryAction(a string) bool {
	return a == "" || slices.Contains(RecoveryActions, a)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

func checkText(key, s string, max int) error {
	if len(s) > max {
		return invalid("%s is %d bytes, at most %d", key, len(s), max)
	}
	return nil
}

// Validate checks the keys common to every heartbeat. It returns an error
// wrapping ErrUnknownSchema for another version, ErrInvalid otherwise.
func (m *Meta) Validate() error {
	if m.V != SchemaVersion {
		return fmt.Errorf("%w: v=%d, this build reads v=%d", ErrUnknownSchema, m.V, SchemaVersion)
	}
	if m.InstanceID == "" || len(m.InstanceID) > MaxInstanceIDLen {
		return invalid("instance_id must be 1-%d bytes", MaxInstanceIDLen)
	}
	if m.Seq == 0 || m.Seq > MaxSeq {
		return invalid("seq %d outside [1, 2^53]", m.Seq)
	}
	if m.SentAtMs < 0 || m.SentAtMs > MaxTimeMs {
		return invalid("sent_at_ms %d outside [0, 2^53]", m.SentAtMs)
	}
	if m.IntervalMs < MinIntervalMs || m.IntervalMs > MaxIntervalMs {
		return invalid("interval_ms %d outside [%d, %d]", m.IntervalMs, MinIntervalMs, MaxIntervalMs)
	}
	if !m.Health.Valid() {
		return invalid("health %q is not healthy|degraded|unhealthy", m.Health)
	}
	if err := checkText("conn", m.Conn, MaxTextLen); err != nil {
		return err
	}
	return checkText("health_reason", m.HealthReason, MaxTextLen)
}

// Validate checks a worker payload. It returns an error wrapping
// ErrUnknownSchema or ErrInvalid. A progress above 2^53 (an engine counter
// that ran that far) is clamped to 2^53, not refused: the worker stays
// valid, and readers that hold numbers as doubles read it exactly.
func (w *Worker) Validate() error {
	if err := w.Meta.Validate(); err != nil {
		return err
	}
	if err := subjects.ValidateID("hive_id", w.HiveID); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := subjects.ValidateID("worker_id", w.WorkerID); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if !w.Status.Valid() {
		return invalid("status %q is unknown", w.Status)
	}
	for _, f := range []struct {
		k, v string
		max  int
	}{{"model_id", w.ModelID, MaxTextLen}, {"device", w.Device, MaxTextLen}, {"version", w.Version, MaxTextLen},
		{"url", w.URL, MaxURLLen}, {"engine", w.Engine, MaxTextLen}} {
		if err := checkText(f.k, f.v, f.max); err != nil {
			return err
		}
	}
	if w.SlotsTotal < 0 || w.SlotsBusy < 0 || w.SlotsBusy > w.SlotsTotal {
		return invalid("slots_busy %d / slots_total %d", w.SlotsBusy, w.SlotsTotal)
	}
	if w.RequestsWaiting != nil && *w.RequestsWaiting < 0 {
		return invalid("requests_waiting %d is negative", *w.RequestsWaiting)
	}
	if w.Progress != nil && *w.Progress > MaxSeq {
		p := uint64(MaxSeq)
		w.Progress = &p
	}
	if w.PID < 0 {
		return invalid("pid %d is negative", w.PID)
	}
	if w.EngineAgeMs < 0 {
		return invalid("engine_age_ms %d is negative", w.EngineAgeMs)
	}
	if k := w.KVCachePercent; k != nil && (!finite(*k) || *k < 0 || *k > 100) {
		return invalid("kv_cache_percent %v outside 0 … 100", *k)
	}
	return nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// Validate checks a hive payload. It returns an error wrapping
// ErrUnknownSchema or ErrInvalid.
func (h *Hive) Validate() error {
	if err := h.Meta.Validate(); err != nil {
		return err
	}
	if err := subjects.ValidateID("hive_id", h.HiveID); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := checkText("hostname", h.Hostname, MaxTextLen); err != nil {
		return err
	}
	if err := checkText("version", h.Version, MaxTextLen); err != nil {
		return err
	}
	if !finite(h.CPUPercent) || h.CPUPercent < 0 || h.CPUPercent > 100 {
		return invalid("cpu_percent %v outside [0, 100]", h.CPUPercent)
	}
	if h.RAMUsedBytes > h.RAMTotalBytes {
		return invalid("ram_used_bytes %d > ram_total_bytes %d", h.RAMUsedBytes, h.RAMTotalBytes)
	}
	if h.HostTemperatureC != nil && !finite(*h.HostTemperatureC) {
		return invalid("host_temperature_c is not finite")
	}
	if len(h.GPUs) > MaxGPUs {
		return invalid("%d gpus, at most %d", len(h.GPUs), MaxGPUs)
	}
	for i := range h.GPUs {
		if err := h.GPUs[i].validate(); err != nil {
			return fmt.Errorf("gpus[%d]: %w", i, err)
		}
	}
	if len(h.Workers) > MaxHiveWorkers {
		return invalid("%d workers, at most %d", len(h.Workers), MaxHiveWorkers)
	}
	if h.WorkersOmitted < 0 || h.WorkersOmitted > MaxSeq {
		return invalid("workers_omitted %d outside [0, 2^53]", h.WorkersOmitted)
	}
	for i, w := range h.Workers {
		if !subjects.ValidID(w.WorkerID) {
			return invalid("workers[%d].worker_id %q is not a valid id", i, w.WorkerID)
		}
		if !w.Status.Valid() || !w.Health.Valid() {
			return invalid("workers[%d] status %q health %q", i, w.Status, w.Health)
		}
		if len(w.ModelID) > MaxTextLen || len(w.Device) > MaxTextLen {
			return invalid("workers[%d] model_id or device too long", i)
		}
		if w.PID < 0 {
			return invalid("workers[%d].pid %d is negative", i, w.PID)
		}
		if len(w.GPUUUIDs) > MaxGPUs {
			return invalid("workers[%d] has %d gpu_uuids, at most %d", i, len(w.GPUUUIDs), MaxGPUs)
		}
		for _, u := range w.GPUUUIDs {
			if len(u) > MaxTextLen {
				return invalid("workers[%d] gpu_uuids entry too long", i)
			}
		}
	}
	return nil
}

func (g *GPU) validate() error {
	if g.Index < 0 {
		return invalid("index %d is negative", g.Index)
	}
	if len(g.UUID) > MaxTextLen || len(g.Name) > MaxTextLen || len(g.HealthReason) > MaxTextLen {
		return invalid("uuid, name or health_reason too long")
	}
	if g.Health != "" && !g.Health.Valid() {
		return invalid("health %q", g.Health)
	}
	if g.VRAMUsedBytes != nil && g.VRAMTotalBytes != nil && *g.VRAMUsedBytes > *g.VRAMTotalBytes {
		return invalid("vram_used_bytes > vram_total_bytes")
	}
	for _, f := range []*float64{g.UtilPercent, g.TemperatureC, g.PowerW} {
		if f != nil && (!finite(*f) || *f < -300) {
			return invalid("util_percent, temperature_c or power_w out of range")
		}
	}
	if g.UtilPercent != nil && *g.UtilPercent > 100 {
		return invalid("util_percent %v > 100", *g.UtilPercent)
	}
	if g.Xid != nil && *g.Xid < 0 {
		return invalid("xid %d is negative", *g.Xid)
	}
	if g.XidAtMs < 0 {
		return invalid("xid_at_ms %d is negative", g.XidAtMs)
	}
	if !validRecoveryAction(g.RecoveryAction) {
		return invalid("recovery_action %q is not one of %v", g.RecoveryAction, RecoveryActions)
	}
	return nil
}

// Validate checks a queen payload. It returns an error wrapping
// ErrUnknownSchema or ErrInvalid.
func (q *Queen) Validate() error {
	if err := q.Meta.Validate(); err != nil {
		return err
	}
	if err := subjects.ValidateID("queen_id", q.QueenID); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	for _, f := range []struct{ k, v string }{{"hostname", q.Hostname}, {"version", q.Version}, {"reason", q.Reason}} {
		if err := checkText(f.k, f.v, MaxTextLen); err != nil {
			return err
		}
	}
	if !q.State.Valid() {
		return invalid("state %q is not ok|degraded|disrupted", q.State)
	}
	if q.Backlog < 0 || q.WriteLagMs < 0 || q.LastWriteMs < 0 || q.Entries < 0 {
		return invalid("backlog %d, write_lag_ms %d, last_write_ms %d, entries %d: negative", q.Backlog, q.WriteLagMs, q.LastWriteMs, q.Entries)
	}
	return nil
}

// Validate checks a registry event. It returns an error wrapping
// ErrUnknownSchema for another version, ErrInvalid otherwise.
func (e *Event) Validate() error {
	if e.V != SchemaVersion {
		return fmt.Errorf("%w: v=%d, this build reads v=%d", ErrUnknownSchema, e.V, SchemaVersion)
	}
	if e.Event == "" || len(e.Event) > MaxTextLen || e.Kind == "" || len(e.Kind) > MaxTextLen {
		return invalid("event %q kind %q", e.Event, e.Kind)
	}
	if err := subjects.ValidateID("hive_id", e.HiveID); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if e.WorkerID != "" {
		if err := subjects.ValidateID("worker_id", e.WorkerID); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	if !Liveness(e.Liveness).Valid() {
		return invalid("liveness %q is not alive|disconnected|stalled", e.Liveness)
	}
	return nil
}

// Validate checks the queen-owned keys of a registry value. It returns an
// error wrapping ErrInvalid.
func (r *Received) Validate() error {
	if !r.Liveness.Valid() {
		return invalid("liveness %q is not alive|disconnected|stalled", r.Liveness)
	}
	if r.LivenessSinceMs < 0 || r.ProgressAtMs < 0 {
		return invalid("liveness_since_ms %d or progress_at_ms %d is negative", r.LivenessSinceMs, r.ProgressAtMs)
	}
	return nil
}
