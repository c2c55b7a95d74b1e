package worker

import (
	"github.com/rbee/heartbeat/engine"
	"github.com/rbee/heartbeat/wire"
)

// applyEngine maps one engine probe onto the worker's state. It is the
// Prober's OnState, called after every probe from the prober's goroutine.
//
//   - status and health: the probe's (starting while loading, ready, busy
//     with requests running, draining while the engine sleeps, stopped past
//     the grace; unhealthy with the probe's error as the reason);
//   - slots_busy: running requests, at most slots_total;
//   - requests_waiting: queued requests;
//   - kv_cache_percent and sleeping: as the engine reports them;
//   - progress: the engine's per-step work counter; a counter below the
//     last one means the engine restarted, and the worker beats as a new
//     instance;
//   - model_id and version: as the engine reports them (its served name
//     first); a failed info read changes nothing else.
//
// A failed probe leaves the last good metrics in place; the beat marks them
// stale (engine_stale, engine_age_ms).
func (w *Worker) applyEngine(s engine.State) {
	if s.Restarted {
		if err := w.restart(s.Metrics.Progress); err != nil {
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
	if m.Progress != nil {
		if err := w.SetProgress(*m.Progress); err != nil {
			// Only possible if a restart could not begin a new instance.
			w.log.Debug("engine progress not recorded", "err", err)
		}
	}
	w.mu.Lock()
	w.state.KVCachePercent = m.KVCachePercent
	w.mu.Unlock()
	w.SetModel(s.Model, s.Version)
	reason := s.Reason
	if len(reason) > wire.MaxTextLen {
		reason = reason[:wire.MaxTextLen]
	}
	w.change(func(st *wire.Worker) bool {
		changed := st.Status != s.Status || st.Health != s.Health || st.HealthReason != reason || st.Sleeping != m.Sleeping
		st.Status, st.Health, st.HealthReason, st.Sleeping = s.Status, s.Health, reason, m.Sleeping
		return changed
	})
}
