// Package worker is the heartbeat side of one inference worker: it publishes
// the worker's state every interval, at once when the state changes, and a
// goodbye when it stops gracefully.
//
// The state comes from the caller (SetStatus, SetSlotsBusy, SetProgress …)
// or, with Config.Engine, from an engine.Prober that reads the inference
// engine's own health and metrics: its running requests become slots_busy
// and busy/ready, its queue requests_waiting, its per-step work counter
// progress, its KV-cache use kv_cache_percent, its sleep sleeping (status
// draining). A counter that goes backwards means the engine restarted; the
// worker then beats as a new instance.
package worker
