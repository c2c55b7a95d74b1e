package worker

import "github.com/rbee/heartbeat/engine"

// applyEngine maps one engine probe onto the worker's state. It is the
// Prober's OnState, called after every probe from the prober's goroutine.
//
//   - status and health: the probe's (starting while loading, ready, busy
//     with requests running, stopped past the grace; unhealthy with the
//     probe's error as the reason);
//   - slots_busy: running requests, at most slots_total;
//   - requests_waiting: queued requests;
//   - progress: the generated-token counter; a counter below the last one
//     means the engine restarted, and the worker beats as a new instance;
//   - model_id and version: as the engine reports them.
//
// A failed probe leaves the last good metrics in place; the beat marks them
// stale (engine_stale, engine_age_ms).
func (w *Worker) applyEngine(s engine.State) {
	if s.Restarted {
		if err := w.restart(s.Metrics.Tokens); err != nil {
			w.log.Debug("engine restarted, new instance not started", "err", err)
		}
	}
	m := s.Metrics
	if m.Running != nil {
		w.SetSlotsBusy(*m.Running)
	}
	if m.Waiting != nil {
		w.SetRequestsWaiting(*m.Waiting)
	}
	if m.Tokens != nil {
		if err := w.SetProgress(*m.Tokens); err != nil {
			// Only possible if a restart could not begin a new instance.
			w.log.Debug("engine progress not recorded", "err", err)
		}
	}
	w.SetModel(m.Model, m.Version)
	_ = w.SetStatus(s.Status, s.Health, s.Reason)
}
