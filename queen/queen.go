package queen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
	"golang.org/x/time/rate"
)

// Queen keeps the registries. Its methods may be called concurrently.
type Queen struct {
	nc      *nats.Conn
	cfg     Config
	scheme  subjects.Scheme
	log     *slog.Logger
	js      jetstream.JetStream
	tracker *tracker
	metrics *metrics
	watcher *registry.Watcher
	sub     *nats.Subscription
	w       *writer

	rejectLog map[subscriber.Reason]*rate.Sometimes
	// kvWorkers and kvHives prefix the subjects of KV writes: $KV.<bucket>.
	kvWorkers, kvHives string

	life    sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
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
	q := &Queen{
		nc:        nc,
		cfg:       cfg,
		scheme:    scheme,
		log:       log.With("component", "queen"),
		tracker:   newTracker(),
		rejectLog: map[subscriber.Reason]*rate.Sometimes{},
		kvWorkers: "$KV." + scheme.WorkersBucket() + ".",
		kvHives:   "$KV." + scheme.HivesBucket() + ".",
	}
	for _, r := range subscriber.Reasons {
		q.rejectLog[r] = &rate.Sometimes{Interval: 5 * time.Second}
	}
	q.w = newWriter(q)
	q.metrics = newMetrics(func() float64 { return float64(q.w.inFlight()) })
	return q, nil
}

// Scheme returns the subject scheme the queen serves.
func (q *Queen) Scheme() subjects.Scheme { return q.scheme }

// Registry returns the queen's mirror of the registry, or nil before Start.
func (q *Queen) Registry() *registry.Watcher { return q.watcher }

// Start creates or updates the buckets, loads the registry, and then
// subscribes to every heartbeat. It returns once beats are being accepted, or
// the first error (ErrStarted if called twice).
func (q *Queen) Start(ctx context.Context) error {
	q.life.Lock()
	defer q.life.Unlock()
	if q.started || q.stopped {
		return ErrStarted
	}
	q.started = true
	runCtx, cancel := context.WithCancel(context.Background())
	q.cancel = cancel
	if err := q.start(ctx, runCtx); err != nil {
		q.shutdown()
		return err
	}
	return nil
}

func (q *Queen) start(ctx, runCtx context.Context) error {
	js, err := jetstream.New(q.nc, jetstream.WithDefaultTimeout(q.cfg.RequestTimeout))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	q.js = js
	if err := q.ensureBuckets(ctx); err != nil {
		return err
	}
	q.watcher, err = registry.Watch(runCtx, js, registry.Config{
		Scheme:   q.scheme,
		OnEvent:  q.onEvent,
		OnPut:    func(_ subjects.Kind, key string, m wire.Meta, r wire.Received) { q.tracker.observe(key, m, r) },
		OnRemove: func(_ subjects.Kind, key string) { q.tracker.forget(key, time.Now().UnixMilli()) },
	})
	if err != nil {
		return err
	}
	if err := q.watcher.WaitReady(ctx); err != nil {
		return fmt.Errorf("load registry: %w", err)
	}
	nw, nh := q.watcher.Sizes()
	q.log.Info("registry loaded", "workers", nw, "hives", nh)

	if err := q.w.start(runCtx.Done()); err != nil {
		return err
	}
	q.wg.Add(1)
	go q.w.retryLoop(runCtx, &q.wg)
	q.wg.Add(1)
	go q.w.watch(runCtx, &q.wg)
	q.wg.Add(1)
	go q.housekeeping(runCtx)

	q.sub, err = q.nc.QueueSubscribe(q.scheme.All(), q.cfg.Queue, q.onMsg)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", q.scheme.All(), err)
	}
	if err := q.sub.SetPendingLimits(q.cfg.PendingMsgs, q.cfg.PendingBytes); err != nil {
		return fmt.Errorf("pending limits: %w", err)
	}
	if err := natsconn.Flush(ctx, q.nc); err != nil {
		return fmt.Errorf("flush subscription: %w", err)
	}
	q.log.Info("accepting heartbeats", "subject", q.scheme.All(), "queue", q.cfg.Queue,
		"worker_ttl", q.cfg.WorkerTTL, "hive_ttl", q.cfg.HiveTTL, "replicas", q.cfg.Replicas)
	return nil
}

// BucketConfig returns the KV configuration of a registry bucket with ttl.
// Expired keys leave a purge marker for LimitMarkerTTL so that watchers see
// the expiry.
func BucketConfig(name string, ttl time.Duration, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         name,
		Description:    "rbee registry: heartbeat entries expire after " + ttl.String() + " without a beat",
		History:        1,
		TTL:            ttl,
		LimitMarkerTTL: ttl,
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
	}
}

func (q *Queen) ensureBuckets(ctx context.Context) error {
	for _, b := range []struct {
		name string
		ttl  time.Duration
	}{{q.scheme.WorkersBucket(), q.cfg.WorkerTTL}, {q.scheme.HivesBucket(), q.cfg.HiveTTL}} {
		if err := q.retryUntilReady(ctx, "bucket "+b.name, func(ctx context.Context) error {
			return q.ensureBucket(ctx, b.name, b.ttl)
		}); err != nil {
			return err
		}
	}
	return nil
}

func (q *Queen) ensureBucket(ctx context.Context, name string, ttl time.Duration) error {
	// Another queen may have made the bucket with other settings: say so
	// before this one changes them, since every queen shares the bucket.
	if kv, err := q.js.KeyValue(ctx, name); err == nil {
		if st, err := kv.Status(ctx); err == nil {
			if old := st.TTL(); old != ttl {
				q.log.Warn("changing the bucket's TTL: every queen should run with the same TTL",
					"bucket", name, "from", old, "to", ttl)
			}
			if info, ok := st.(*jetstream.KeyValueBucketStatus); ok && info.StreamInfo().Config.Replicas != q.cfg.Replicas {
				q.log.Warn("changing the bucket's replicas: every queen should run with the same --replicas",
					"bucket", name, "from", info.StreamInfo().Config.Replicas, "to", q.cfg.Replicas)
			}
		}
	} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("bucket %s: %w", name, err)
	}
	kv, err := q.js.CreateOrUpdateKeyValue(ctx, BucketConfig(name, ttl, q.cfg.Replicas))
	if err != nil {
		return fmt.Errorf("bucket %s: %w", name, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return fmt.Errorf("bucket %s status: %w", name, err)
	}
	if st.TTL() != ttl || st.LimitMarkerTTL() != ttl {
		return fmt.Errorf("bucket %s has TTL %s and marker TTL %s, want %s", name, st.TTL(), st.LimitMarkerTTL(), ttl)
	}
	return nil
}

// retryUntilReady runs f until it succeeds, fails for a reason waiting will
// not change, or ctx ends. A JetStream cluster that is still forming (no
// meta leader yet, too few peers for the replicas) leaves API requests
// unanswered or answers 503; so does a server that is restarting. Each
// attempt is bounded on its own, so a request lost to an election does not
// use up the whole of ctx; attempts grow to RequestTimeout for a slow server.
func (q *Queen) retryUntilReady(ctx context.Context, what string, f func(context.Context) error) error {
	attempt := min(q.cfg.RequestTimeout, time.Second)
	backoff := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := f(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !jetStreamNotReady(err) {
			return err
		}
		q.log.Info("waiting for JetStream", "what", what, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
		attempt = min(2*attempt, q.cfg.RequestTimeout)
	}
}

// jetStreamNotReady reports whether err says JetStream cannot answer yet.
func jetStreamNotReady(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jsClusterNotAvail, jsInsufficientResources, jsClusterNoPeers:
			return true
		}
		return apiErr.Code == 503
	}
	return false
}

// JetStream API error codes (nats-server's server/errors.json) that mean the
// cluster is not ready yet.
const (
	jsClusterNotAvail       jetstream.ErrorCode = 10008
	jsInsufficientResources jetstream.ErrorCode = 10023
	jsClusterNoPeers        jetstream.ErrorCode = 10005
)

// Stop unsubscribes, waits up to ctx for the writes in flight, and stops the
// registry watcher. It is safe to call twice.
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
	if q.sub != nil {
		_ = q.sub.Unsubscribe()
	}
	if !q.w.wait(ctx) {
		q.log.Warn("stopping with writes in flight", "in_flight", q.w.inFlight())
	}
	q.shutdown()
}

func (q *Queen) shutdown() {
	q.cancel()
	q.wg.Wait()
	q.w.stop()
	if q.watcher != nil {
		q.watcher.Stop()
	}
}

func (q *Queen) housekeeping(ctx context.Context) {
	defer q.wg.Done()
	ttl := max(q.cfg.WorkerTTL, q.cfg.HiveTTL)
	t := time.NewTicker(ttl)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := q.tracker.sweep(time.Now().Add(-10 * ttl).UnixMilli()); n > 0 {
				q.log.Debug("forgot departed senders", "count", n)
			}
		}
	}
}

// onMsg handles one heartbeat; it runs on the subscription's goroutine.
func (q *Queen) onMsg(msg *nats.Msg) {
	hb, err := subscriber.Decode(q.scheme, msg)
	if err != nil {
		var re *subscriber.RejectError
		if errors.As(err, &re) {
			q.reject(kindOf(q.scheme, msg.Subject), re)
		}
		return
	}
	q.accept(hb)
}

// accept applies a decoded heartbeat: replay check, then the KV write.
func (q *Queen) accept(hb *subscriber.Heartbeat) {
	m := hb.Meta()
	// One string holds the KV subject and, as its tail, the key.
	var subject, key string
	kind := hb.Addr.Kind
	if kind == subjects.KindWorker {
		subject = q.kvWorkers + hb.Addr.HiveID + "." + hb.Addr.WorkerID // subjects.WorkerKey, in one allocation
		key = subject[len(q.kvWorkers):]
	} else {
		subject = q.kvHives + subjects.HiveKey(hb.Addr.HiveID)
		key = subject[len(q.kvHives):]
	}
	now := time.Now().UnixMilli()
	first, ok := q.tracker.admit(key, m, now)
	if !ok {
		q.reject(kind, &subscriber.RejectError{Reason: subscriber.ReasonReplay, Subject: hb.Subject,
			Err: fmt.Errorf("instance %s seq %d is not newer than the last accepted", m.InstanceID, m.Seq)})
		return
	}
	q.metrics.accepted(kind)
	q.metrics.skew(now - m.SentAtMs)
	if hb.Goodbye {
		q.metrics.goodbye(kind)
		q.w.write(newWrite(kind, subject, key, m.InstanceID, m.Seq, nil))
		return
	}
	rec := wire.Received{ReceivedAtMs: now, FirstSeenMs: first, SkewMs: now - m.SentAtMs}
	var data []byte
	if kind == subjects.KindWorker {
		data = wire.AppendWorkerEntry(nil, hb.Worker, rec)
	} else {
		var err error
		data, err = wire.Marshal(&wire.HiveEntry{Hive: *hb.Hive, Received: rec})
		if err != nil { // cannot happen for a validated beat; never crash on it
			q.log.Error("encode registry entry", "key", key, "err", err)
			return
		}
	}
	q.w.write(newWrite(kind, subject, key, m.InstanceID, m.Seq, data))
}

func kindOf(s subjects.Scheme, subject string) subjects.Kind {
	if a, err := s.Parse(subject); err == nil {
		return a.Kind
	}
	return "unknown"
}

func (q *Queen) reject(kind subjects.Kind, re *subscriber.RejectError) {
	q.metrics.rejected(kind, re.Reason)
	if s := q.rejectLog[re.Reason]; s != nil {
		s.Do(func() {
			q.log.Warn("heartbeat rejected", "reason", re.Reason, "subject", re.Subject, "err", re.Err,
				"rejected_total", q.metrics.rejectedTotal(re.Reason))
		})
	}
}

func (q *Queen) onEvent(ev registry.Event) {
	q.metrics.event(ev.Kind, ev.Type)
	args := []any{"kind", ev.Kind, "key", ev.Key}
	switch {
	case ev.Worker != nil:
		args = append(args, "status", ev.Worker.Status, "health", ev.Worker.Health, "model", ev.Worker.ModelID)
	case ev.Hive != nil:
		args = append(args, "health", ev.Hive.Health, "workers", len(ev.Hive.Workers), "gpus", len(ev.Hive.GPUs))
	}
	level := slog.LevelInfo
	if ev.Type == registry.Expired {
		level = slog.LevelWarn
	}
	q.log.Log(context.Background(), level, string(ev.Kind)+" "+string(ev.Type), args...)
	if q.cfg.OnEvent != nil {
		q.cfg.OnEvent(ev)
	}
}
