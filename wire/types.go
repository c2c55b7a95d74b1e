package wire

// SchemaVersion is the payload version ("v") this package writes and accepts.
const SchemaVersion = 1

// Header names and values carried by every heartbeat message.
const (
	HeaderContentType = "Content-Type"
	HeaderSchema      = "Rbee-Schema"
	HeaderEvent       = "Rbee-Event"

	ContentTypeMsgpack = "application/msgpack"
	SchemaWorker       = "worker/1"
	SchemaHive         = "hive/1"
	EventGoodbye       = "goodbye"
)

// Health is the sender's own judgement of its health.
type Health string

// Health values.
const (
	Healthy   Health = "healthy"
	Degraded  Health = "degraded"
	Unhealthy Health = "unhealthy"
)

// Valid reports whether h is one of the defined health values.
func (h Health) Valid() bool { return h == Healthy || h == Degraded || h == Unhealthy }

// Status is a worker's lifecycle state.
type Status string

// Status values.
const (
	StatusStarting Status = "starting"
	StatusReady    Status = "ready"
	StatusBusy     Status = "busy"
	StatusDraining Status = "draining"
	StatusStopping Status = "stopping"
	StatusStopped  Status = "stopped"
)

// Valid reports whether s is one of the defined worker states.
func (s Status) Valid() bool {
	switch s {
	case StatusStarting, StatusReady, StatusBusy, StatusDraining, StatusStopping, StatusStopped:
		return true
	}
	return false
}

// Meta holds the keys every heartbeat carries. It is inlined into Worker and Hive.
type Meta struct {
	// V is the schema version, SchemaVersion.
	V int `msgpack:"v" json:"v"`
	// InstanceID is random per process start; a new one means the sender restarted.
	InstanceID string `msgpack:"instance_id" json:"instance_id"`
	// Seq increases by one with every beat of one instance, starting at 1.
	Seq uint64 `msgpack:"seq" json:"seq"`
	// SentAtMs is the sender's clock (Unix ms) when the beat was built; informational only.
	SentAtMs int64 `msgpack:"sent_at_ms" json:"sent_at_ms"`
	// IntervalMs is the sender's heartbeat interval in milliseconds.
	IntervalMs int64 `msgpack:"interval_ms" json:"interval_ms"`
	// Health is the sender's own health judgement.
	Health Health `msgpack:"health" json:"health"`
	// HealthReason says why Health is not healthy; empty otherwise.
	HealthReason string `msgpack:"health_reason" json:"health_reason"`
}

// Worker is the heartbeat payload of a worker (schema worker/1).
type Worker struct {
	Meta       `msgpack:",inline"`
	HiveID     string `msgpack:"hive_id" json:"hive_id"`
	WorkerID   string `msgpack:"worker_id" json:"worker_id"`
	Status     Status `msgpack:"status" json:"status"`
	ModelID    string `msgpack:"model_id" json:"model_id"`
	Device     string `msgpack:"device" json:"device"`
	URL        string `msgpack:"url" json:"url"`
	Version    string `msgpack:"version" json:"version"`
	SlotsTotal int    `msgpack:"slots_total" json:"slots_total"`
	SlotsBusy  int    `msgpack:"slots_busy" json:"slots_busy"`
}

// Hive is the heartbeat payload of a hive (schema hive/1).
type Hive struct {
	Meta          `msgpack:",inline"`
	HiveID        string  `msgpack:"hive_id" json:"hive_id"`
	Hostname      string  `msgpack:"hostname" json:"hostname"`
	Version       string  `msgpack:"version" json:"version"`
	CPUPercent    float64 `msgpack:"cpu_percent" json:"cpu_percent"`
	RAMUsedBytes  uint64  `msgpack:"ram_used_bytes" json:"ram_used_bytes"`
	RAMTotalBytes uint64  `msgpack:"ram_total_bytes" json:"ram_total_bytes"`
	// HostTemperatureC is the hottest host sensor (°C); absent where the platform exposes none.
	HostTemperatureC *float64 `msgpack:"host_temperature_c,omitempty" json:"host_temperature_c,omitempty"`
	// StatsStale is true when the system or GPU sample could not be refreshed in
	// time and the last good one was reused.
	StatsStale bool `msgpack:"stats_stale,omitempty" json:"stats_stale,omitempty"`
	// StatsAgeMs is how old the stats sample is, in milliseconds.
	StatsAgeMs int64        `msgpack:"stats_age_ms,omitempty" json:"stats_age_ms,omitempty"`
	GPUs       []GPU        `msgpack:"gpus" json:"gpus"`
	Workers    []HiveWorker `msgpack:"workers" json:"workers"`
}

// GPU is one device in a hive heartbeat. Measurements the device could not
// report are absent (nil), never a made-up zero.
type GPU struct {
	Index          int      `msgpack:"index" json:"index"`
	UUID           string   `msgpack:"uuid" json:"uuid"`
	Name           string   `msgpack:"name" json:"name"`
	VRAMUsedBytes  *uint64  `msgpack:"vram_used_bytes,omitempty" json:"vram_used_bytes,omitempty"`
	VRAMTotalBytes *uint64  `msgpack:"vram_total_bytes,omitempty" json:"vram_total_bytes,omitempty"`
	UtilPercent    *float64 `msgpack:"util_percent,omitempty" json:"util_percent,omitempty"`
	TemperatureC   *float64 `msgpack:"temperature_c,omitempty" json:"temperature_c,omitempty"`
	PowerW         *float64 `msgpack:"power_w,omitempty" json:"power_w,omitempty"`
	// Health is degraded when NVML reports a condition that makes the GPU unwell.
	Health       Health `msgpack:"health,omitempty" json:"health,omitempty"`
	HealthReason string `msgpack:"health_reason,omitempty" json:"health_reason,omitempty"`
}

// HiveWorker is the hive's own view of one of its workers.
type HiveWorker struct {
	WorkerID   string `msgpack:"worker_id" json:"worker_id"`
	Status     Status `msgpack:"status" json:"status"`
	Health     Health `msgpack:"health" json:"health"`
	ModelID    string `msgpack:"model_id" json:"model_id"`
	Device     string `msgpack:"device" json:"device"`
	LastSeenMs int64  `msgpack:"last_seen_ms" json:"last_seen_ms"`
}

// Received holds the keys the queen adds to an accepted beat before storing it.
type Received struct {
	// ReceivedAtMs is the queen's clock (Unix ms) when it accepted the beat.
	ReceivedAtMs int64 `msgpack:"received_at_ms" json:"received_at_ms"`
	// FirstSeenMs is the queen's clock when it first accepted a beat of this instance.
	FirstSeenMs int64 `msgpack:"first_seen_ms" json:"first_seen_ms"`
	// SkewMs is ReceivedAtMs minus the sender's SentAtMs: clock skew plus transit.
	SkewMs int64 `msgpack:"skew_ms" json:"skew_ms"`
}

// WorkerEntry is the value of a key in the worker registry bucket.
type WorkerEntry struct {
	Worker   `msgpack:",inline"`
	Received `msgpack:",inline"`
}

// HiveEntry is the value of a key in the hive registry bucket.
type HiveEntry struct {
	Hive     `msgpack:",inline"`
	Received `msgpack:",inline"`
}

// Stamp sets the keys the publisher owns: schema version, instance, sequence,
// send time and interval. The payload's own keys, health included, are left alone.
func (m *Meta) Stamp(instanceID string, seq uint64, sentAtMs, intervalMs int64) {
	m.V = SchemaVersion
	m.InstanceID = instanceID
	m.Seq = seq
	m.SentAtMs = sentAtMs
	m.IntervalMs = intervalMs
}
