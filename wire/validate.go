package wire

import (
	"fmt"
	"math"

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
	// 2^53) and refuses negative values that msgpack would wrap to 2^64−n.
	MaxSeq = 1 << 53
)

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
	if m.IntervalMs < MinIntervalMs || m.IntervalMs > MaxIntervalMs {
		return invalid("interval_ms %d outside [%d, %d]", m.IntervalMs, MinIntervalMs, MaxIntervalMs)
	}
	if !m.Health.Valid() {
		return invalid("health %q is not healthy|degraded|unhealthy", m.Health)
	}
	return checkText("health_reason", m.HealthReason, MaxTextLen)
}

// Validate checks a worker payload. It returns an error wrapping
// ErrUnknownSchema or ErrInvalid.
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
	}{{"model_id", w.ModelID, MaxTextLen}, {"device", w.Device, MaxTextLen}, {"version", w.Version, MaxTextLen}, {"url", w.URL, MaxURLLen}} {
		if err := checkText(f.k, f.v, f.max); err != nil {
			return err
		}
	}
	if w.SlotsTotal < 0 || w.SlotsBusy < 0 || w.SlotsBusy > w.SlotsTotal {
		return invalid("slots_busy %d / slots_total %d", w.SlotsBusy, w.SlotsTotal)
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
	return nil
}
