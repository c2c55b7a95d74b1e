package queen

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"golang.org/x/time/rate"
)

// overloadLag is the write lag past which the queen reports itself
// overloaded: beats are then written later than a reader would expect.
const overloadLag = time.Second

// storeSilence is how long a registry write may wait for its
// acknowledgement before the queen reports the store failing: acks come in
// milliseconds on a healthy store and in tens of them under overload (the
// write window is bounded), so half a second of silence is a store that
// stopped answering (a full disk, a lost stream leader).
const storeSilence = 500 * time.Millisecond

// minDisruption is the fewest expiries that can make a disruption: two
// workers of a small system dying together are a failure, not a disruption.
const minDisruption = 3

// healthState tracks what the queen's own state is made of: expiries
// (disruption), subscription drops, conflicts. Its methods may be called
// concurrently.
type healthState struct {
	share float64

	mu             sync.Mutex
	expiries       map[time.Duration]*expiryLog // by TTL: within the last TTL
	disruptedUntil time.Time
	// What the disruption is made of, formatted only when asked (state):
	// expiredN of expiredOf entries expired within one TTL, or the queen
	// was stopped for stoppedFor (0: it was not).
	expiredN, expiredOf int
	stoppedFor          time.Duration
	droppedAt           time.Time
	conflictLog         rate.Sometimes
}

// expiryLog holds the times of recent expiries of one TTL, oldest first,
// so dropping the old ones is amortised O(1) per expiry even when thousands
// expire at once.
type expiryLog struct {
	at   []time.Time
	head int
}

// prune drops the expiries older than ttl and returns how many are left.
func (l *expiryLog) prune(now time.Time, ttl time.Duration) int {
	for l.head < len(l.at) && now.Sub(l.at[l.head]) > ttl {
		l.head++
	}
	if l.head > len(l.at)/2 {
		l.at = append(l.at[:0], l.at[l.head:]...)
		l.head = 0
	}
	return len(l.at) - l.head
}

func newHealthState(cfg Config) *healthState {
	return &healthState{share: cfg.DisruptionShare, conflictLog: rate.Sometimes{Interval: 5 * time.Second}}
}

// expired records an expiry; live is the number of entries still in the
// registry. More than the configured share expiring within one TTL makes the
// registry disrupted until one TTL passes without that, after the Kubernetes
// node controller's disruption mode: a scheduler should not move work
// because of expiries the queen itself may have caused.
func (h *healthState) expired(log *slog.Logger, now time.Time, ttlMs int64, live int) {
	ttl := time.Duration(max(ttlMs, 1000)) * time.Millisecond
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.expiries == nil {
		h.expiries = map[time.Duration]*expiryLog{}
	}
	if h.expiries[ttl] == nil {
		h.expiries[ttl] = &expiryLog{}
	}
	h.expiries[ttl].at = append(h.expiries[ttl].at, now)
	n := 0
	for d, l := range h.expiries {
		if k := l.prune(now, d); k > 0 {
			n += k
		} else if d != ttl {
			delete(h.expiries, d)
		}
	}
	share := float64(n) / float64(n+live)
	if n >= minDisruption && share > h.share {
		if !now.Before(h.disruptedUntil) {
			log.Warn("registry disrupted: many entries expired at once; schedulers should hold rescheduling",
				"expired", n, "live", live, "share", fmt.Sprintf("%.2f", share))
		}
		if until := now.Add(ttl); until.After(h.disruptedUntil) {
			h.disruptedUntil = until
		}
		h.expiredN, h.expiredOf, h.stoppedFor = n, n+live, 0
	}
}

// stopped reports the registry disrupted after the queen itself was stopped
// (SIGSTOP, a frozen VM) for gap, for as long again.
func (h *healthState) stopped(log *slog.Logger, now time.Time, gap time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	log.Warn("registry disrupted: this queen was stopped; entries with a shorter TTL expired meanwhile; schedulers should hold rescheduling",
		"stopped", gap.Round(time.Millisecond))
	if until := now.Add(gap); until.After(h.disruptedUntil) {
		h.disruptedUntil, h.stoppedFor = until, gap
	}
}

func (h *healthState) dropped(now time.Time) {
	h.mu.Lock()
	h.droppedAt = now
	h.mu.Unlock()
}

func (h *healthState) conflict(log *slog.Logger, kind subjects.Kind, key, instance string) {
	h.conflictLog.Do(func() {
		log.Warn("two instances beat under one key (a forgery, or two processes started with one ID)",
			"kind", kind, "key", key, "instance", instance)
	})
}

// state returns the queen's state and its reason, worst first: disrupted,
// then degraded (store failing, broker connection down, dropping beats,
// overloaded), then ok.
func (q *Queen) state(st writerStats) (wire.QueenState, string) {
	now := time.Now()
	h := q.health
	h.mu.Lock()
	disrupted, n, of, stopped, droppedAt := now.Before(h.disruptedUntil), h.expiredN, h.expiredOf, h.stoppedFor, h.droppedAt
	h.mu.Unlock()
	switch {
	case disrupted && stopped > 0:
		return wire.QueenDisrupted, fmt.Sprintf("registry disrupted: the queen was stopped for %.1fs", stopped.Seconds())
	case disrupted:
		return wire.QueenDisrupted, fmt.Sprintf("registry disrupted: %d of %d entries expired within one TTL", n, of)
	case st.Failing:
		return wire.QueenDegraded, "store failing: " + st.LastErr
	case q.cfg.StoreFailed != nil && q.cfg.StoreFailed():
		return wire.QueenDegraded, "store failing: the broker reported a failed store write"
	case st.AckWaitMs > storeSilence.Milliseconds():
		return wire.QueenDegraded, fmt.Sprintf("store failing: no acknowledgement for %.1fs", float64(st.AckWaitMs)/1000)
	case q.nc.Status() != nats.CONNECTED:
		return wire.QueenDegraded, "broker connection " + q.nc.Status().String()
	case !droppedAt.IsZero() && now.Sub(droppedAt) < 2*q.cfg.Interval:
		return wire.QueenDegraded, "overloaded: dropping beats"
	case st.LagMs > overloadLag.Milliseconds():
		return wire.QueenDegraded, fmt.Sprintf("overloaded: %d keys waiting, oldest %.1fs", st.Backlog, float64(st.LagMs)/1000)
	}
	return wire.QueenOK, ""
}

// ErrNotOK is returned (wrapped) by Health when the queen is not ok.
var ErrNotOK = errors.New("queen not ok")

// Health returns nil while the queen is started and ok, else an error
// wrapping ErrNotOK that says why (for /healthz).
func (q *Queen) Health() error {
	q.life.Lock()
	started, stopped := q.started, q.stopped
	q.life.Unlock()
	switch {
	case !started:
		return fmt.Errorf("%w: not started", ErrNotOK)
	case stopped:
		return fmt.Errorf("%w: stopped", ErrNotOK)
	}
	if s, reason := q.state(q.w.stats()); s != wire.QueenOK {
		return fmt.Errorf("%w: %s: %s", ErrNotOK, s, reason)
	}
	return nil
}

// Status returns the queen's own heartbeat payload as it would send it now.
func (q *Queen) Status() wire.Queen {
	st := q.w.stats()
	s, reason := q.state(st)
	out := wire.Queen{
		QueenID:     q.cfg.QueenID,
		Hostname:    hostname(),
		Version:     q.cfg.Version,
		State:       s,
		Reason:      reason,
		Backlog:     st.Backlog,
		WriteLagMs:  st.LagMs,
		LastWriteMs: st.LastWriteMs,
		Dropped:     uint64(value(q.metrics.dropped)),
		Coalesced:   q.metrics.replaced(),
	}
	if w := q.Registry(); w != nil {
		nw, nh := w.Sizes()
		out.Entries = nw + nh
	}
	out.Health = wire.Healthy
	if s != wire.QueenOK {
		out.Health, out.HealthReason = wire.Degraded, reason
	}
	return out
}
