// Package worker is the heartbeat side of one inference worker: it publishes
// the worker's state every interval, at once when the state changes, and a
// goodbye when it stops gracefully.
//
// The state comes from the caller (SetStatus, SetSlotsBusy, SetProgress …)
// or, with Config.Engine, from an engine.Prober that reads the inference
// engine's own health and metrics: its running requests become slots_busy
// and busy/ready, its queue requests_waiting, its generated-token counter
// progress. A counter that goes backwards means the engine restarted; the
// worker then beats as a new instance.
package worker
