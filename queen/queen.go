package queen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
	"golang.org/x/time/rate"
)

// Queen keeps the registries. It keeps the lifecycle contract of package
// lifecycle; all its methods may be called concurrently, also during Start
// and Stop.
type Queen struct {
	nc      *nats.Conn
	cfg     Config
	scheme  subjects.Scheme
	log     *slog.Logger
	metrics *metrics
	w       *writer
	health  *healthState

	rejectLog map[subscriber.Reason]*rate.Sometimes

	watcher atomic.Pointer[registry.Watcher]  // set during Start
	beats   atomic.Pointer[nats.Subscription] // the beat subscription, set during Start
	mu      sync.Mutex                        // guards js, set during Start
	js      jetstream.JetStream

	life    sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	subs    []*nats.Subscription
	self    *publisher.Publisher[*wire.Queen]
	reserve reserve
}

// New returns a Queen that will use nc. It returns an error wrapping
// ErrInvalidConfig for a bad Config.
func New(nc *nats.Conn, cfg Config) (*Queen, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, fmt.Errorf("%w: a connection is required", ErrInvalidConfig)
	}
	scheme, _ := subjects.New(cfg.Prefix)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "queen", "queen_id", cfg.QueenID)
	q := &Queen{
		nc:        nc,
		cfg:       cfg,
		scheme:    scheme,
		log:       log,
		metrics:   newMetrics(),
		rejectLog: map[subscriber.Reason]*rate.Sometimes{},
	}
	q.health = newHealthState(cfg)
	for _, r := range subscriber.Reasons {
		q.rejectLog[r] = &rate.Sometimes{Interval: 5 * time.Second}
	}
	q.w = newWriter(log.With("component", "queen-writer"), q.metrics, cfg.MaxInFlight, map[subjects.Kind]string{
		subjects.KindWorker: "$KV." + scheme.WorkersBucket() + ".",
		subjects.KindHive:   "$KV." + scheme.HivesBucket() + ".",
		subjects.KindQueen:  "$KV." + scheme.QueensBucket() + ".",
	})
	q.w.cfg = cfg
	return q, nil
}

// Scheme returns the subject scheme the queen serves.
func (q *Queen) Scheme() subjects.Scheme { return q.scheme }

// ID returns the queen's ID.
func (q *Queen) ID() string { return q.cfg.QueenID }

// Registry returns the queen's mirror of the registry, or nil before Start
// has set it up.
func (q *Queen) Registry() *registry.Watcher { return q.watcher.Load() }

// Start checks the server, creates or migrates the buckets, subscribes to
// every heartbeat, and then loads the registry in the background: beats are
// written from the first moment, so a restarted queen keeps entries alive
// before it has read them all. It returns once beats are being accepted, or
// the first error (wrapping ErrStarted if called twice or after Stop,
// ErrServerTooOld for a server without per-message TTLs). The queen runs
// until Stop or ctx ends.
func (q *Queen) Start(ctx context.Context) error {
	q.life.Lock()
	defer q.life.Unlock()
	if q.started || q.stopped {
		return fmt.Errorf("queen %s: %w", q.cfg.QueenID, ErrStarted)
	}
	q.started = true
	runCtx, cancel := context.WithCancel(ctx)
	q.cancel = cancel
	setupCtx, cancelSetup := context.WithTimeout(runCtx, q.cfg.StartTimeout)
	defer cancelSetup()
	if err := q.start(setupCtx, runCtx); err != nil {
		q.shutdown()
		return err
	}
	// The run ends with ctx as with Stop.
	go func() {
		<-runCtx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q.Stop(sctx)
	}()
	return nil
}

// MinServerVersion is the oldest nats-server with per-message TTLs and KV
// limit markers, which the registry needs.
const MinServerVersion = "2.11.0"

// CheckServerVersion returns an error wrapping ErrServerTooOld if version
// (as nats.go's ConnectedServerVersion reports it) is older than
// MinServerVersion.
func CheckServerVersion(version string) error {
	if version == "" {
		return nil // unknown (not connected yet): bucket creation will say
	}
	if !versionAtLeast(version, MinServerVersion) {
		return fmt.Errorf("%w: the server is nats-server %s; rbee needs %s or later (per-message TTL and KV limit markers)",
			ErrServerTooOld, version, MinServerVersion)
	}
	return nil
}

func versionAtLeast(v, want string) bool {
	parse := func(s string) [3]int {
		s = strings.TrimPrefix(s, "v")
		s, _, _ = strings.Cut(s, "-")
		var out [3]int
		for i, p := range strings.SplitN(s, ".", 3) {
			out[i], _ = strconv.Atoi(p)
		}
		return out
	}
	a, b := parse(v), parse(want)
	for i := range a {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return true
}

func (q *Queen) start(ctx, runCtx context.Context) error {
	if err := CheckServerVersion(q.nc.ConnectedServerVersion()); err != nil {
		return err
	}
	js, err := jetstream.New(q.nc,
		jetstream.WithDefaultTimeout(q.cfg.RequestTimeout),
		jetstream.WithPublishAsyncMaxPending(2*q.cfg.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(q.cfg.WriteTimeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, pa *jetstream.PubAck) { q.w.acked(m, pa) }),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) { q.w.failed(m, err) }),
	)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	q.w.js = js
	q.mu.Lock()
	q.js = js
	q.mu.Unlock()
	if err := q.ensureBuckets(ctx); err != nil {
		return err
	}

	q.w.holdUntilLoaded()
	q.wg.Add(2)
	go func() { defer q.wg.Done(); q.w.run() }()
	go func() { defer q.wg.Done(); q.w.runRereads(runCtx) }()

	// Beats first: a restarted queen must keep entries alive before it has
	// loaded them.
	sub, err := q.nc.QueueSubscribe(q.scheme.All(), q.cfg.Queue, q.onMsg)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", q.scheme.All(), err)
	}
	q.subs = append(q.subs, sub)
	q.beats.Store(sub)
	if err := sub.SetPendingLimits(q.cfg.PendingMsgs, q.cfg.PendingBytes); err != nil {
		return fmt.Errorf("pending limits: %w", err)
	}
	if q.cfg.Advisories {
		if err := q.subscribeAdvisories(); err != nil {
			return err
		}
	}
	if err := natsconn.Flush(ctx, q.nc); err != nil {
		return fmt.Errorf("flush subscription: %w", err)
	}

	watcher, err := registry.Watch(runCtx, js, registry.Config{
		Scheme: q.scheme, OnEvent: q.onEvent, Refreshes: true, Logger: q.log, Known: q.w.known,
	})
	if err != nil {
		return err
	}
	q.watcher.Store(watcher)
	q.w.setMirror(q.mirrored)
	q.wg.Add(2)
	go func() {
		defer q.wg.Done()
		if watcher.WaitReady(runCtx) == nil {
			nw, nh := watcher.Sizes()
			q.log.Info("registry loaded", "workers", nw, "hives", nh)
		}
	}()
	go func() {
		// Writes wait for the mirror, at most loadWait: a key's first
		// write then expects the revision the mirror shows instead of
		// failing and being read again, one key at a time.
		defer q.wg.Done()
		defer q.w.loaded()
		t := time.NewTimer(loadWait)
		defer t.Stop()
		select {
		case <-watcher.Ready():
		case <-t.C:
			q.log.Warn("registry not loaded yet: writing before it is, each key read once as it is written", "waited", loadWait)
		case <-runCtx.Done():
		}
	}()

	self, err := q.newSelfPublisher()
	if err != nil {
		return err
	}
	if err := self.Start(runCtx); err != nil {
		return err
	}
	q.self = self

	q.wg.Add(1)
	go q.housekeeping(runCtx, sub)
	q.log.Info("accepting heartbeats", "subject", q.scheme.All(), "queue", q.cfg.Queue,
		"missed", q.cfg.Missed, "max_ttl", q.cfg.MaxTTL, "replicas", q.cfg.Replicas)
	return nil
}

// Stop sends the queen's goodbye, drains its subscriptions (the beats and
// goodbyes already delivered are handled; what ctx leaves no time for is
// counted as dropped and logged), waits up to ctx for the writes still
// queued, and stops the registry watcher. Before Start, and a second time,
// it returns at once.
func (q *Queen) Stop(ctx context.Context) {
	q.life.Lock()
	defer q.life.Unlock()
	if q.stopped {
		return
	}
	q.stopped = true
	if !q.started {
		return
	}
	if q.self != nil {
		_ = q.self.Stop(ctx)
	}
	q.drain(ctx)
	q.reserve.follow(q, 0)
	if !q.w.wait(ctx) {
		st := q.w.stats()
		q.log.Warn("stopping with registry writes queued", "backlog", st.Backlog, "in_flight", st.InFlight)
	}
	q.leave(ctx)
	q.shutdown()
}

// drain drains the queen's subscriptions and waits up to ctx for what they
// had delivered; beats left unhandled are counted as dropped.
func (q *Queen) drain(ctx context.Context) {
	for _, s := range q.subs {
		if err := s.Drain(); err != nil {
			_ = s.Unsubscribe()
		}
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for _, s := range q.subs {
		for s.IsValid() && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		}
		if !s.IsValid() {
			continue
		}
		n, _, _ := s.Pending()
		_ = s.Unsubscribe()
		if n > 0 {
			q.metrics.dropped.Add(float64(n))
			q.log.Warn("stopping before every delivered beat was handled", "subject", s.Subject, "dropped", n)
		}
	}
}

func (q *Queen) shutdown() {
	q.cancel()
	q.w.stop()
	q.wg.Wait()
	if w := q.Registry(); w != nil {
		w.Stop()
	}
}

// stateCheck is how often the queen looks for a change of its own state
// and for beats held in reserve that no queen took.
const stateCheck = 100 * time.Millisecond

// housekeeping counts subscription drops, forgets departed senders, repairs
// a failing store, beats a change of state at once, and runs the reserve.
func (q *Queen) housekeeping(ctx context.Context, sub *nats.Subscription) {
	defer q.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	// A change of the queen's state is beaten at once, not at the next
	// interval, so every consumer sees a failing store within one interval.
	stateT := time.NewTicker(stateCheck)
	defer stateT.Stop()
	var (
		state          = wire.QueenOK
		dropped        int
		reserveDropped int
		lastSweep      = time.Now()
		lastFix        time.Time
		dropLog        = rate.Sometimes{Interval: 10 * time.Second}
	)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-stateT.C:
			q.reserve.tick(q, now)
			q.reserve.rescue(q, now)
			if s, _ := q.state(q.w.stats()); s != state {
				state = s
				q.self.Trigger()
			}
		case now := <-t.C:
			if d, err := sub.Dropped(); err == nil && d > dropped {
				q.metrics.dropped.Add(float64(d - dropped))
				q.health.dropped(now)
				n := d
				dropLog.Do(func() {
					q.log.Warn("heartbeats dropped: the queen cannot decode as fast as they arrive", "dropped_total", n)
				})
				dropped = d
			}
			// A lingering peer is not writing: the reserve takes its share,
			// and this queen's refreshes may stay lazy.
			live, lingering := q.peers(now)
			q.reserve.follow(q, live+lingering)
			q.w.setEager(live > 0)
			if d := q.reserve.dropped(); d > reserveDropped {
				q.metrics.reserveDrop.Add(float64(d - reserveDropped))
				n := d
				dropLog.Do(func() {
					q.log.Warn("beats held in reserve dropped: the queen cannot hold them as fast as they arrive", "dropped_total", n)
				})
			}
			reserveDropped = q.reserve.dropped()
			if now.Sub(lastSweep) > q.cfg.MaxTTL {
				lastSweep = now
				if n := q.w.sweep(now.Add(-q.cfg.MaxTTL).UnixMilli()); n > 0 {
					q.log.Debug("forgot departed senders", "count", n)
				}
			}
			failed := q.cfg.StoreFailed != nil && q.cfg.StoreFailed()
			if st := q.w.stats(); (st.Failing || failed) && q.cfg.Repair != nil && now.Sub(lastFix) > 5*time.Second {
				lastFix = now
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if err := q.cfg.Repair(rctx); err != nil {
					q.log.Warn("store repair failed", "err", err)
				}
				cancel()
			}
		}
	}
}

// onMsg handles one heartbeat; it runs on the subscription's goroutine and
// never blocks on the store: the writer queues per key.
func (q *Queen) onMsg(msg *nats.Msg) {
	if q.reserve.took(msg) {
		return // taken from the reserve already: this queen's share was behind
	}
	if q.reserve.stalled() {
		// This queen was frozen: its share waited in the socket while the
		// other queens took those beats from their reserves. It discards
		// them (counted) rather than write old beats; the conditional
		// writes would refuse most, at a re-read each.
		q.metrics.shed(kindOf(q.scheme, msg.Subject), "stalled")
		return
	}
	q.decode(msg, time.Now().UnixMilli())
}

// decode decodes and validates a beat that arrived at nowMs and, unless it
// is refused (counted and logged), admits and queues its registry write
// under one hold of the writer's lock.
func (q *Queen) decode(msg *nats.Msg, nowMs int64) {
	hb, err := subscriber.Decode(q.scheme, msg)
	if err != nil {
		var re *subscriber.RejectError
		if errors.As(err, &re) {
			q.reject(kindOf(q.scheme, msg.Subject), re)
		}
		return
	}
	q.w.mu.Lock()
	defer q.w.mu.Unlock()
	if o := q.admit(hb, nowMs); o != nil {
		q.w.putLocked(o)
	}
}

// buffered returns how many beats wait in the subscription's buffer,
// received and not yet decoded: the queen's ingest backlog.
func (q *Queen) buffered() int {
	sub := q.beats.Load()
	if sub == nil {
		return 0
	}
	n, _, err := sub.Pending()
	if err != nil {
		return 0
	}
	return n
}

// reasons maps the tracker's refusals to rejection reasons.
var reasons = map[string]subscriber.Reason{
	"replay":   subscriber.ReasonReplay,
	"seq":      subscriber.ReasonReplay,
	"conflict": subscriber.ReasonConflict,
}

// admit applies a decoded heartbeat that arrived at now: TTL, freshness and
// conflicts (the tracker's rules). It returns the registry write to queue,
// or nil if refused. The writer's lock is held.
func (q *Queen) admit(hb *subscriber.Heartbeat, now int64) *op {
	m := hb.Meta()
	kind, key := hb.Addr.Kind, keyOf(hb.Subject, hb.Addr)
	ttlMs := q.cfg.ttlMs(m.IntervalMs)
	if ttlMs > q.cfg.MaxTTL.Milliseconds() {
		q.reject(kind, &subscriber.RejectError{Reason: subscriber.ReasonInterval, Subject: hb.Subject,
			Err: fmt.Errorf("TTL %d × %d ms passes the max TTL %s", q.cfg.Missed, m.IntervalMs, q.cfg.MaxTTL)})
		return nil
	}
	var (
		busy     bool
		progress *uint64
	)
	if hb.Worker != nil {
		busy = hb.Worker.SlotsBusy > 0 || hb.Worker.Status == wire.StatusBusy
		progress = hb.Worker.Progress
	}
	v := q.w.admitLocked(target{kind, key}, m, hb.Goodbye, busy, progress, now)
	if v.reason == "superseded" {
		q.metrics.superseded(kind)
		return nil
	}
	if !v.ok {
		if v.reason == "conflict" {
			q.metrics.conflicts.WithLabelValues(string(kind)).Inc()
			q.health.conflict(q.log, kind, key, m.InstanceID)
		}
		q.reject(kind, &subscriber.RejectError{Reason: reasons[v.reason], Subject: hb.Subject,
			Err: fmt.Errorf("instance %s seq %d: %s", m.InstanceID, m.Seq, v.detail)})
		return nil
	}
	if v.conflict {
		q.health.conflict(q.log, kind, key, m.InstanceID)
	}
	q.metrics.accepted.WithLabelValues(string(kind)).Inc()
	q.metrics.skew(wire.SkewMs(now, m.SentAtMs))
	o := &op{kind: kind, key: key, ttlMs: ttlMs, intervalMs: m.IntervalMs, acceptedMs: now,
		instance: m.InstanceID, seq: m.Seq, conn: m.Conn, slot: v.slot}
	if hb.Goodbye {
		q.metrics.goodbyes.WithLabelValues(string(kind)).Inc()
		o.del = true
		return o
	}
	switch kind {
	case subjects.KindWorker:
		o.worker = hb.WorkerEntry(v.rec)
	case subjects.KindHive:
		o.hive = &wire.HiveEntry{Hive: *hb.Hive, Received: v.rec}
	default:
		o.queen = &wire.QueenEntry{Queen: *hb.Queen, Received: v.rec}
	}
	return o
}

func kindOf(s subjects.Scheme, subject string) subjects.Kind {
	if a, err := s.Parse(subject); err == nil {
		return a.Kind
	}
	return "unknown"
}

func (q *Queen) reject(kind subjects.Kind, re *subscriber.RejectError) {
	c, err := q.metrics.rejected.GetMetricWithLabelValues(string(kind), string(re.Reason))
	if err != nil {
		return
	}
	c.Inc()
	if s := q.rejectLog[re.Reason]; s != nil {
		s.Do(func() {
			q.log.Warn("heartbeat rejected", "reason", re.Reason, "subject", re.Subject, "err", re.Err,
				"rejected_total", value(c))
		})
	}
}

// metaOf returns the common keys of ev's entry; zero if it has none.
func metaOf(ev registry.Event) wire.Meta {
	switch {
	case ev.Worker != nil:
		return ev.Worker.Meta
	case ev.Hive != nil:
		return ev.Hive.Meta
	case ev.Queen != nil:
		return ev.Queen.Meta
	}
	return wire.Meta{}
}

// onEvent learns from every registry change (the watcher's goroutine, one
// at a time): what other queens wrote, departures, expiries.
func (q *Queen) onEvent(ev registry.Event) {
	tg := target{ev.Kind, ev.Key}
	if ev.Kind == subjects.KindQueen && ev.Key != q.cfg.QueenID {
		q.reserve.linger(q, ev, time.Now())
	}
	switch ev.Type {
	case registry.Left, registry.Expired:
		q.w.forget(tg, ev.Revision, ev.Type == registry.Left, metaOf(ev).InstanceID, time.Now().UnixMilli())
	default:
		switch {
		case ev.Worker != nil:
			q.w.observe(tg, ev.Revision, &ev.Worker.Meta, &ev.Worker.Received, ev.Worker.Progress)
		case ev.Hive != nil:
			q.w.observe(tg, ev.Revision, &ev.Hive.Meta, &ev.Hive.Received, nil)
		case ev.Queen != nil:
			q.w.observe(tg, ev.Revision, &ev.Queen.Meta, &ev.Queen.Received, nil)
		}
	}
	if ev.Type == registry.Refreshed {
		if q.cfg.Refreshes && q.cfg.OnEvent != nil {
			q.cfg.OnEvent(ev)
		}
		return
	}
	if ev.Type == registry.Expired && ev.Kind != subjects.KindQueen {
		nw, nh := q.Registry().Sizes()
		q.health.expired(q.log, time.Now(), q.cfg.ttlMs(metaOf(ev).IntervalMs), nw+nh)
	}
	if c, err := q.metrics.events.GetMetricWithLabelValues(string(ev.Kind), string(ev.Type)); err == nil {
		c.Inc()
	}
	q.log.Debug(string(ev.Kind)+" "+string(ev.Type), "key", ev.Key)
	if q.cfg.OnEvent != nil {
		q.cfg.OnEvent(ev)
	}
}

// Stats returns a snapshot of the counters.
func (q *Queen) Stats() Stats {
	m := q.metrics
	s := Stats{
		Accepted:   map[subjects.Kind]uint64{},
		Superseded: map[subjects.Kind]uint64{},
		Goodbyes:   map[subjects.Kind]uint64{},
		Rejected:   map[subscriber.Reason]uint64{},
		Events:     map[registry.EventType]uint64{},
	}
	for _, k := range kinds {
		ks := string(k)
		s.Accepted[k] = uint64(value(m.accepted.WithLabelValues(ks)))
		s.Goodbyes[k] = uint64(value(m.goodbyes.WithLabelValues(ks)))
		s.Superseded[k] = uint64(value(m.supersededC.WithLabelValues(ks)))
		s.Lost += uint64(value(m.writeOut.WithLabelValues(ks, "lost")))
		for _, r := range subscriber.Reasons {
			s.Rejected[r] += uint64(value(m.rejected.WithLabelValues(ks, string(r))))
		}
		for _, e := range registry.EventTypes {
			s.Events[e] += uint64(value(m.events.WithLabelValues(ks, string(e))))
		}
	}
	s.Dropped = uint64(value(m.dropped))
	s.Coalesced = m.replaced()
	if w := q.Registry(); w != nil {
		s.Workers, s.Hives = w.Sizes()
	}
	st := q.w.stats()
	s.InFlight, s.Backlog, s.Refreshes = st.InFlight, st.Backlog, st.Refreshes
	s.State, s.Reason = q.state(st)
	return s
}

// Collector returns a Prometheus collector exporting the queen's metrics.
func (q *Queen) Collector() prometheus.Collector { return collector{q} }
