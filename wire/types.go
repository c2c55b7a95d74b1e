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
	SchemaQueen        = "queen/1"
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
	// Conn names the NATS connection the beat was sent on,
	// "<server_id>/<client_id>"; optional for outside senders.
	Conn string `msgpack:"conn,omitempty" json:"conn,omitempty"`
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
	// RequestsWaiting is the number of requests queued in the engine, not yet running.
	RequestsWaiting *int `msgpack:"requests_waiting,omitempty" json:"requests_waiting,omitempty"`
	// Progress counts completed work (e.g. tokens generated); it only grows
	// within an instance. Absent: the worker is never judged stalled.
	Progress *uint64 `msgpack:"progress,omitempty" json:"progress,omitempty"`
	// PID is the engine's process ID on the hive's machine, for VRAM per worker.
	PID int `msgpack:"pid,omitempty" json:"pid,omitempty"`
	// Engine names the inference engine probed (vllm, llamacpp, tgi, sglang, generic).
	Engine string `msgpack:"engine,omitempty" json:"engine,omitempty"`
	// EngineStale is true when the last engine probe failed or ran late and
	// the previous good reading was reused; EngineAgeMs is that reading's age.
	EngineStale bool  `msgpack:"engine_stale,omitempty" json:"engine_stale,omitempty"`
	EngineAgeMs int64 `msgpack:"engine_age_ms,omitempty" json:"engine_age_ms,omitempty"`
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
	// Xid is the last NVIDIA Xid error reported for the GPU, XidAtMs when (hive clock).
	Xid     *int  `msgpack:"xid,omitempty" json:"xid,omitempty"`
	XidAtMs int64 `msgpack:"xid_at_ms,omitempty" json:"xid_at_ms,omitempty"`
	// RecoveryAction is the driver's recommended action: none, gpu_reset,
	// node_reboot, drain_p2p or drain_and_reset.
	RecoveryAction string `msgpack:"recovery_action,omitempty" json:"recovery_action,omitempty"`
}

// HiveWorker is the hive's own view of one of its workers.
type HiveWorker struct {
	WorkerID   string `msgpack:"worker_id" json:"worker_id"`
	Status     Status `msgpack:"status" json:"status"`
	Health     Health `msgpack:"health" json:"health"`
	ModelID    string `msgpack:"model_id" json:"model_id"`
	Device     string `msgpack:"device" json:"device"`
	LastSeenMs int64  `msgpack:"last_seen_ms" json:"last_seen_ms"`
	// PID is the worker's engine process, as the worker reports it.
	PID int `msgpack:"pid,omitempty" json:"pid,omitempty"`
	// VRAMUsedBytes is the GPU memory the worker's process holds on all GPUs
	// (NVML running-process lists); absent when unknown.
	VRAMUsedBytes *uint64 `msgpack:"vram_used_bytes,omitempty" json:"vram_used_bytes,omitempty"`
	// GPUUUIDs are the GPUs the worker's process holds memory on.
	GPUUUIDs []string `msgpack:"gpu_uuids,omitempty" json:"gpu_uuids,omitempty"`
}

// Received holds the keys the queen adds to an accepted beat before storing it.
type Received struct {
	// ReceivedAtMs is the queen's clock (Unix ms) when it accepted the beat.
	ReceivedAtMs int64 `msgpack:"received_at_ms" json:"received_at_ms"`
	// FirstSeenMs is the queen's clock when it first accepted a beat of this instance.
	FirstSeenMs int64 `msgpack:"first_seen_ms" json:"first_seen_ms"`
	// SkewMs is ReceivedAtMs minus the sender's SentAtMs: clock skew plus transit.
	SkewMs int64 `msgpack:"skew_ms" json:"skew_ms"`
	// Liveness is the queen's judgement beyond the TTL: alive (also when
	// absent), disconnected or stalled; LivenessSinceMs is when it took that value.
	Liveness        Liveness `msgpack:"liveness,omitempty" json:"liveness,omitempty"`
	LivenessSinceMs int64    `msgpack:"liveness_since_ms,omitempty" json:"liveness_since_ms,omitempty"`
	// ProgressAtMs is the queen's clock when the worker's progress last grew.
	ProgressAtMs int64 `msgpack:"progress_at_ms,omitempty" json:"progress_at_ms,omitempty"`
	// Conflict is true while two instances beat under this key at once.
	Conflict bool `msgpack:"conflict,omitempty" json:"conflict,omitempty"`
}

// Liveness is the queen's view of an entry beyond its TTL.
type Liveness string

// Liveness values. The empty value means LivenessAlive.
const (
	LivenessAlive        Liveness = "alive"
	LivenessDisconnected Liveness = "disconnected"
	LivenessStalled      Liveness = "stalled"
)

// QueenState is a queen's judgement of its own registry.
type QueenState string

// QueenState values.
const (
	QueenOK        QueenState = "ok"
	QueenDegraded  QueenState = "degraded"
	QueenDisrupted QueenState = "disrupted"
)

// Queen is the heartbeat payload of a queen (schema queen/1).
type Queen struct {
	Meta     `msgpack:",inline"`
	QueenID  string     `msgpack:"queen_id" json:"queen_id"`
	Hostname string     `msgpack:"hostname" json:"hostname"`
	Version  string     `msgpack:"version" json:"version"`
	State    QueenState `msgpack:"state" json:"state"`
	// Reason says why State is not ok: overloaded, store failing, registry disrupted.
	Reason string `msgpack:"reason" json:"reason"`
	// Backlog is the number of registry keys waiting to be written.
	Backlog int `msgpack:"backlog" json:"backlog"`
	// WriteLagMs is how long the oldest waiting write has waited.
	WriteLagMs int64 `msgpack:"write_lag_ms" json:"write_lag_ms"`
	// LastWriteMs is the queen's clock (Unix ms) at its last acknowledged registry write; 0 if none yet.
	LastWriteMs int64 `msgpack:"last_write_ms" json:"last_write_ms"`
	// Dropped counts beats the queen's subscription dropped since it started.
	Dropped uint64 `msgpack:"dropped" json:"dropped"`
	// Coalesced counts beats replaced by a newer beat of the same key before being written.
	Coalesced uint64 `msgpack:"coalesced" json:"coalesced"`
	// Entries is the number of live registry entries the queen sees (workers and hives).
	Entries int `msgpack:"entries" json:"entries"`
}

// QueenEntry is the value of a key in the queen registry bucket.
type QueenEntry struct {
	Queen    `msgpack:",inline"`
	Received `msgpack:",inline"`
}

// Event is a registry event as published on <prefix>.evt.<kind>.<hive_id>[.<worker_id>]
// and kept in the event stream.
type Event struct {
	V        int    `msgpack:"v" json:"v"`
	Event    string `msgpack:"event" json:"event"`
	Kind     string `msgpack:"kind" json:"kind"`
	Key      string `msgpack:"key" json:"key"`
	HiveID   string `msgpack:"hive_id" json:"hive_id"`
	WorkerID string `msgpack:"worker_id,omitempty" json:"worker_id,omitempty"`
	// AtMs is the server time of the KV operation (Unix ms); Revision its KV revision.
	AtMs     int64  `msgpack:"at_ms" json:"at_ms"`
	Revision uint64 `msgpack:"revision" json:"revision"`
	QueenID  string `msgpack:"queen_id" json:"queen_id"`
	// Previous is the status (workers) or health (hives) before an updated event.
	Previous     string `msgpack:"previous,omitempty" json:"previous,omitempty"`
	InstanceID   string `msgpack:"instance_id,omitempty" json:"instance_id,omitempty"`
	Status       string `msgpack:"status,omitempty" json:"status,omitempty"`
	Health       string `msgpack:"health,omitempty" json:"health,omitempty"`
	HealthReason string `msgpack:"health_reason,omitempty" json:"health_reason,omitempty"`
	Liveness     string `msgpack:"liveness,omitempty" json:"liveness,omitempty"`
	ModelID      string `msgpack:"model_id,omitempty" json:"model_id,omitempty"`
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
