package registry

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// putSeen identifies the last value delivered for a key.
type putSeen struct {
	rev uint64
	at  time.Time
}

// Change is one operation on a key of a bucket, as a KVWatch delivers it.
type Change struct {
	Key string
	// Op is jetstream.KeyValuePut, KeyValueDelete (a goodbye: left) or
	// KeyValuePurge (an expiry).
	Op jetstream.KeyValueOp
	// Revision is the operation's stream sequence; for a removal found by a
	// re-list with no marker left in the stream, the revision of the last
	// value delivered for the key.
	Revision uint64
	// Created is the server time of the operation; for a removal found by a
	// re-list with no marker left, the time the re-list found it.
	Created time.Time
	// Value is a put's value (shared: do not modify it).
	Value []byte
	// Initial is true for the values loaded when the watch started.
	Initial bool
	// Relisted is true for a removal the watch did not see as a marker but
	// found by re-listing the bucket after a gap (see KVWatch).
	Relisted bool
}

// KVWatchConfig configures a KVWatch.
type KVWatchConfig struct {
	// OnChange is called for every change, one call at a time, in revision
	// order (removals found by a re-list come after the changes that led to
	// the re-list). It must not block for long: it holds up the watch.
	// Required.
	OnChange func(Change)
	// Logger receives re-list results and failures; nil discards.
	Logger *slog.Logger
}

// KVWatch follows every key of one JetStream KV bucket across connection
// losses, server restarts and watches that end.
//
// After any gap it resumes at the revision after the last one it delivered,
// so the operations whose messages are still in the stream (puts, and the
// delete and purge markers within their lifetime) arrive in order. Once the
// resumed watch has caught up it re-lists the bucket, reading the last
// message of every key's subject, and for each key it holds as present:
//   - a live value or a marker newer than what was delivered: nothing, the
//     resumed watch delivers it;
//   - a marker it did not deliver: that removal (delete marker: left, purge
//     marker: expired), Relisted;
//   - nothing left in the stream (the marker aged out during the gap, or the
//     bucket's age limit removed the entry): an expiry, Relisted, with the
//     revision of the last value delivered for the key.
//
// A consumer that mirrors the bucket from the changes thus never keeps an
// entry the bucket no longer has. A bucket whose stream was created again
// meanwhile (deleted and re-created, or a server that lost its store), or
// cut back below the last revision seen (a server killed before it wrote
// its last messages to disk), is read whole instead of resumed, then
// re-listed the same way. A re-list restores the state, not the
// history of the gap: an entry that expired and came back while no marker
// survived shows as a new value only.
//
// Its methods may be called concurrently.
type KVWatch struct {
	cfg      KVWatchConfig
	kv       jetstream.KeyValue
	nc       *nats.Conn
	log      *slog.Logger
	present  map[string]putSeen // key → its last put delivered (run's goroutine only)
	last     uint64             // revision of the last change delivered (run's goroutine only)
	created  time.Time          // when the bucket's stream was created (run's goroutine only)
	relists  atomic.Uint64
	relisted atomic.Uint64
	ready    chan struct{}
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	once     sync.Once
}

// WatchKV starts a KVWatch on bucket. It returns an error wrapping
// jetstream.ErrBucketNotFound if the bucket does not exist, or the error of
// the first watch; after that the watch re-establishes itself until Stop or
// ctx ends.
func WatchKV(ctx context.Context, js jetstream.JetStream, bucket string, cfg KVWatchConfig) (*KVWatch, error) {
	if cfg.OnChange == nil {
		return nil, fmt.Errorf("watch %s: %w", bucket, ErrNoOnChange)
	}
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", bucket, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &KVWatch{
		cfg: cfg, kv: kv, nc: js.Conn(), log: log.With("bucket", bucket),
		present: map[string]putSeen{}, ready: make(chan struct{}), cancel: cancel,
	}
	kw, stop, err := w.watch(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	w.created, _, _ = w.stream(ctx)
	w.wg.Add(1)
	go w.run(ctx, kw, stop)
	return w, nil
}

// watch starts a watch of the whole bucket. A KV watch ends when the
// context it was created with ends, so it gets one that lasts until ctx
// ends or stop is called; its creation alone is bounded by rewatchTimeout.
func (w *KVWatch) watch(ctx context.Context, opts ...jetstream.WatchOpt) (kw jetstream.KeyWatcher, stop func(), err error) {
	wctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(rewatchTimeout, cancel)
	kw, err = w.kv.WatchAll(wctx, opts...)
	if !timer.Stop() && err == nil {
		_ = kw.Stop()
		err = fmt.Errorf("not set up within %s", rewatchTimeout)
	}
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("watch %s: %w", w.kv.Bucket(), err)
	}
	return kw, func() { _ = kw.Stop(); cancel() }, nil
}

// Ready is closed once the initial state is delivered.
func (w *KVWatch) Ready() <-chan struct{} { return w.ready }

// Stop ends the watch and waits for its goroutine. Safe to call twice.
func (w *KVWatch) Stop() {
	w.once.Do(func() {
		w.cancel()
		w.wg.Wait()
	})
}

// Relists returns how many re-lists the watch has done (one per gap).
func (w *KVWatch) Relists() uint64 { return w.relists.Load() }

// Relisted returns how many removals the watch found by re-listing rather
// than by seeing their marker.
func (w *KVWatch) Relisted() uint64 { return w.relisted.Load() }

// rewatchTimeout bounds the creation of a replacement watch, relistTimeout
// a re-list (a meta-only read of every key); rewatchRetry is the pause
// before trying again.
const (
	rewatchTimeout = 5 * time.Second
	relistTimeout  = 30 * time.Second
	rewatchRetry   = 250 * time.Millisecond
)

// run delivers the bucket's changes. After a reconnect it replaces the watch
// with one resuming at the next revision: the ordered consumer under a KV
// watch notices a consumer lost with a restarted server only after two
// missed idle heartbeats (10-20 s), and the watch would be blind until then.
// A watch that ends on its own is replaced the same way.
func (w *KVWatch) run(ctx context.Context, kw jetstream.KeyWatcher, stop func()) {
	defer w.wg.Done()
	defer func() { stop() }() // the current watch, replaced below
	var reconnected chan nats.Status
	if w.nc != nil {
		reconnected = w.nc.StatusChanged(nats.CONNECTED)
		defer w.nc.RemoveStatusListener(reconnected)
	}
	var (
		loading = true
		gap     bool // a replacement watch is running: re-list once it caught up
		updates = kw.Updates()
		retry   <-chan time.Time
	)
	defer func() {
		if loading {
			close(w.ready)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
			retry = time.After(0)
		case <-retry:
			retry = nil
			rctx, cancel := context.WithTimeout(ctx, rewatchTimeout)
			var opts []jetstream.WatchOpt
			var err error
			if !loading {
				var renumbered bool
				if renumbered, err = w.renumbered(rctx); renumbered {
					w.last = 0 // read the stream whole; the re-list drops what it lacks
				}
				if w.last > 0 {
					opts = append(opts, jetstream.ResumeFromRevision(w.last+1))
				}
			}
			cancel()
			var (
				nkw   jetstream.KeyWatcher
				nstop func()
			)
			if err == nil {
				nkw, nstop, err = w.watch(ctx, opts...)
			}
			if err != nil {
				if ctx.Err() == nil {
					w.log.Debug("watch not replaced", "err", err)
					retry = time.After(rewatchRetry)
				}
				continue
			}
			stop()
			stop, updates, gap = nstop, nkw.Updates(), true
		case e, ok := <-updates:
			if !ok {
				updates, retry = nil, time.After(rewatchRetry)
				continue
			}
			if e == nil {
				if gap {
					if err := w.relist(ctx); err != nil {
						if ctx.Err() == nil {
							w.log.Warn("re-list failed, trying again", "err", err)
							retry = time.After(rewatchRetry)
						}
						continue
					}
					gap = false
				}
				if loading {
					loading = false
					close(w.ready)
				}
				continue
			}
			if e.Revision() <= w.last {
				continue // delivered again by a replacement watch
			}
			if p, ok := w.present[e.Key()]; ok && e.Operation() == jetstream.KeyValuePut &&
				p.rev == e.Revision() && p.at.Equal(e.Created()) {
				w.last = e.Revision()
				continue // the same value, read again from a renumbered stream
			}
			w.deliver(Change{Key: e.Key(), Op: e.Operation(), Revision: e.Revision(), Created: e.Created(),
				Value: e.Value(), Initial: loading})
		}
	}
}

// stream returns when the bucket's stream was created and its last
// sequence.
func (w *KVWatch) stream(ctx context.Context) (created time.Time, lastSeq uint64, err error) {
	st, err := w.kv.Status(ctx)
	if err != nil {
		return time.Time{}, 0, err
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		info := bs.StreamInfo()
		return info.Created, info.State.LastSeq, nil
	}
	return time.Time{}, 0, nil
}

// renumbered reports whether the bucket's stream no longer holds the
// revisions the watch followed: created again (deleted and re-created, or a
// server that lost its store), or cut back below the last revision seen (a
// server killed before it wrote its last messages to disk). Its revisions
// then run again through numbers the watch has seen, and resuming after the
// last one would skip the new entries.
func (w *KVWatch) renumbered(ctx context.Context) (bool, error) {
	created, lastSeq, err := w.stream(ctx)
	if err != nil {
		return false, fmt.Errorf("bucket status: %w", err)
	}
	if created.IsZero() {
		return false, nil
	}
	again := !w.created.IsZero() && !created.Equal(w.created)
	w.log.Debug("resuming", "stream_created", created, "stream_last_seq", lastSeq, "last_revision_seen", w.last)
	w.created = created
	if again || lastSeq < w.last {
		w.log.Warn("bucket's stream no longer holds the revisions seen: reading it whole",
			"created_again", again, "last_revision_seen", w.last, "stream_last_seq", lastSeq)
		return true, nil
	}
	return false, nil
}

func (w *KVWatch) deliver(c Change) {
	if c.Revision > w.last {
		w.last = c.Revision
	}
	if c.Op == jetstream.KeyValuePut {
		w.present[c.Key] = putSeen{c.Revision, c.Created}
	} else {
		delete(w.present, c.Key)
	}
	w.cfg.OnChange(c)
}

// relist reads the last message of every key's subject (a meta-only,
// last-per-subject watch of the whole bucket, markers included) and delivers
// the removals of present keys the watch did not see.
func (w *KVWatch) relist(ctx context.Context) error {
	if len(w.present) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, relistTimeout)
	defer cancel()
	lw, err := w.kv.WatchAll(rctx, jetstream.MetaOnly())
	if err != nil {
		return fmt.Errorf("re-list %s: %w", w.kv.Bucket(), err)
	}
	defer func() { _ = lw.Stop() }()
	type last struct {
		op  jetstream.KeyValueOp
		rev uint64
		at  time.Time
	}
	listed := make(map[string]last, len(w.present))
	for done := false; !done; {
		select {
		case <-rctx.Done():
			return fmt.Errorf("re-list %s: %w", w.kv.Bucket(), rctx.Err())
		case e, ok := <-lw.Updates():
			switch {
			case !ok:
				return fmt.Errorf("re-list %s: watch ended", w.kv.Bucket())
			case e == nil:
				done = true
			default:
				if _, held := w.present[e.Key()]; held {
					listed[e.Key()] = last{e.Operation(), e.Revision(), e.Created()}
				}
			}
		}
	}
	w.relists.Add(1)
	now := time.Now()
	var gone []Change
	for key, p := range w.present {
		l, ok := listed[key]
		switch {
		case !ok:
			gone = append(gone, Change{Key: key, Op: jetstream.KeyValuePurge, Revision: p.rev, Created: now, Relisted: true})
		case l.op != jetstream.KeyValuePut && l.rev <= w.last:
			gone = append(gone, Change{Key: key, Op: l.op, Revision: l.rev, Created: l.at, Relisted: true})
		}
	}
	slices.SortFunc(gone, func(a, b Change) int { return strings.Compare(a.Key, b.Key) })
	for _, c := range gone {
		w.relisted.Add(1)
		w.deliver(c)
	}
	w.log.Info("re-listed after a gap", "present", len(w.present), "removed_unseen", len(gone))
	return nil
}
