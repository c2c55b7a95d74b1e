package queen

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Migration limits: the whole migration of one bucket has its own deadline
// (not a bucket request's); each entry is tried migrateAttempts times, and
// at most migrateWindow rewrites await their acknowledgement at once.
const (
	migrateTimeout  = 90 * time.Second
	migrateAttempts = 3
	migrateWindow   = 1024
	migrateLogKeys  = 20 // entries that failed named one by one in the log; the rest are counted
)

// Migration results, the values of the result label of
// rbee_queen_migrated_entries_total.
const (
	migrateRewritten  = "rewritten"  // written again with the TTL it had left
	migratePurged     = "purged"     // already past its old TTL: purged, as the old bucket would have expired it
	migrateSuperseded = "superseded" // a newer write of the key came first
	migrateGone       = "gone"       // the key was deleted or expired meanwhile
	migrateFailed     = "failed"     // not migrated: each failure is logged; the entry lives until the age limit
)

func newMigrationCounter() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_queen_migrated_entries_total",
		Help: "Entries of an older-scheme bucket migrated to per-entry TTLs, by bucket and result (rewritten, purged, superseded, gone, failed: not migrated, each logged)."},
		[]string{"bucket", "result"})
	return c
}

// migrateEntry is one entry being migrated.
type migrateEntry struct {
	key     string
	rev     uint64
	created time.Time
	value   []byte
}

// migration is the state of one bucket's migration.
type migration struct {
	q       *Queen
	js      jetstream.JetStream // its own context: the writer's ack handlers must not see these writes
	kv      jetstream.KeyValue
	bucket  string
	oldTTL  time.Duration
	done    map[string]bool // keys settled
	queued  map[string]bool // keys waiting for another attempt (in retry)
	retry   []migrateEntry
	lastErr map[string]error
	counts  map[string]int
}

// migrate rewrites every entry of the bucket with the TTL it had left under
// the old bucket-wide TTL oldTTL, and purges the entries already past it, as
// the old bucket would have expired them. Every write is conditional on the
// revision read, so a newer beat written meanwhile is never overwritten.
// Writes are pipelined; a write that fails for any other reason is tried
// again (after re-reading the key) up to migrateAttempts times. What could
// not be migrated by ctx's deadline or after the attempts is counted
// (rbee_queen_migrated_entries_total{result="failed"}) and logged; such an
// entry lives until the bucket's age limit. migrate returns an error only if
// the queen is stopping.
func (q *Queen) migrate(ctx context.Context, bucket string, oldTTL time.Duration) error {
	js, err := jetstream.New(q.nc, jetstream.WithPublishAsyncMaxPending(migrateWindow),
		jetstream.WithPublishAsyncTimeout(q.cfg.WriteTimeout), jetstream.WithDefaultTimeout(q.cfg.RequestTimeout))
	if err != nil {
		return fmt.Errorf("migrate %s: %w", bucket, err)
	}
	m := &migration{q: q, js: js, bucket: bucket, oldTTL: oldTTL, done: map[string]bool{}, queued: map[string]bool{},
		lastErr: map[string]error{}, counts: map[string]int{}}
	began := time.Now()
	unread, err := m.run(ctx)
	m.counts[migrateFailed] += unread
	for _, r := range []string{migrateRewritten, migratePurged, migrateSuperseded, migrateGone, migrateFailed} {
		q.metrics.migrated.WithLabelValues(bucket, r).Add(float64(m.counts[r]))
	}
	attrs := []any{"bucket", bucket, "took", time.Since(began).Round(time.Millisecond),
		"rewritten", m.counts[migrateRewritten], "purged", m.counts[migratePurged], "superseded", m.counts[migrateSuperseded],
		"gone", m.counts[migrateGone], "failed", m.counts[migrateFailed]}
	if m.counts[migrateFailed] > 0 || err != nil {
		if unread > 0 {
			attrs = append(attrs, "never_read_at_most", unread)
		}
		q.log.Warn("bucket migration incomplete: the entries not migrated keep no TTL of their own and live until the age limit",
			append(attrs, "max_ttl", q.cfg.MaxTTL, "err", err)...)
	} else {
		q.log.Info("bucket migrated to per-entry TTLs", attrs...)
	}
	if q.stopping(ctx) {
		return fmt.Errorf("migrate %s: %w", bucket, context.Cause(ctx))
	}
	return nil
}

// stopping reports whether ctx ended because the queen is stopping, not by
// the migration's own deadline.
func (q *Queen) stopping(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// run lists the bucket and migrates what it reads, then retries the
// failures. It returns at most how many entries it never read (the listing
// was cut short) and the last error met.
func (m *migration) run(ctx context.Context) (unread int, err error) {
	for attempt := 1; ; attempt++ {
		if m.kv == nil {
			m.kv, err = m.js.KeyValue(ctx, m.bucket)
		}
		if err == nil {
			unread, err = m.pass(ctx)
		}
		if err == nil || attempt == migrateAttempts || ctx.Err() != nil {
			break
		}
		m.q.log.Info("bucket migration: listing failed, trying again", "bucket", m.bucket, "attempt", attempt, "err", err)
	}
	for attempt := 2; attempt <= migrateAttempts && len(m.retry) > 0 && ctx.Err() == nil; attempt++ {
		retry := m.retry
		m.retry = nil
		clear(m.queued)
		var w window
		for _, e := range retry {
			cur, gerr := m.kv.Get(ctx, e.key)
			switch {
			case errors.Is(gerr, jetstream.ErrKeyNotFound) || errors.Is(gerr, jetstream.ErrKeyDeleted):
				m.settle(e.key, migrateGone)
			case gerr != nil:
				m.again(e, gerr)
			case cur.Revision() != e.rev:
				m.settle(e.key, migrateSuperseded)
			default:
				m.send(ctx, &w, e)
			}
		}
		m.drain(ctx, &w)
	}
	for _, e := range m.retry {
		m.fail(e.key, m.lastErr[e.key])
	}
	m.retry = nil
	return unread, err
}

// pass reads every entry (a KV watch of the latest values) and migrates
// those neither settled nor waiting for another attempt. It returns at most
// how many entries were left unread if the listing ended early.
func (m *migration) pass(ctx context.Context) (unread int, err error) {
	// Until the first entry says how many follow, the bucket's message
	// count (markers included) bounds what is left to read.
	var pending uint64
	if st, err := m.kv.Status(ctx); err == nil {
		pending = st.Values()
	}
	kw, err := m.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return int(pending), err
	}
	defer func() { _ = kw.Stop() }()
	var w window
	defer m.drain(ctx, &w)
	for {
		select {
		case <-ctx.Done():
			return int(pending), ctx.Err()
		case e, ok := <-kw.Updates():
			if !ok {
				return int(pending), errors.New("listing ended early")
			}
			if e == nil {
				return 0, nil
			}
			pending = e.Delta()
			if m.done[e.Key()] || m.queued[e.Key()] {
				continue
			}
			m.send(ctx, &w, migrateEntry{key: e.Key(), rev: e.Revision(), created: e.Created(), value: e.Value()})
		}
	}
}

// window holds the writes awaiting their acknowledgement.
type window struct {
	entries []migrateEntry
	futures []jetstream.PubAckFuture
}

// send writes one entry again with the TTL it has left (or purges it),
// conditional on its revision, waiting first for the oldest write if the
// window is full.
func (m *migration) send(ctx context.Context, w *window, e migrateEntry) {
	for len(w.futures) >= migrateWindow {
		m.await(ctx, w)
	}
	msg := &nats.Msg{Subject: "$KV." + m.bucket + "." + e.key, Header: nats.Header{}}
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(e.rev, 10))
	if left := time.Until(e.created.Add(m.oldTTL)); left > 0 {
		msg.Data = e.value
		msg.Header.Set(jetstream.MsgTTLHeader, ttlHeader(left))
	} else {
		// As kv.Purge with a marker TTL: the purge marker ages out like an expiry's.
		msg.Header.Set("KV-Operation", "PURGE")
		msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		msg.Header.Set(jetstream.MsgTTLHeader, ttlHeader(MarkerTTL))
	}
	f, err := m.js.PublishMsgAsync(msg)
	if err != nil {
		m.again(e, err)
		return
	}
	w.entries = append(w.entries, e)
	w.futures = append(w.futures, f)
}

// await settles the oldest write of the window.
func (m *migration) await(ctx context.Context, w *window) {
	e, f := w.entries[0], w.futures[0]
	w.entries, w.futures = w.entries[1:], w.futures[1:]
	select {
	case <-f.Ok():
		if f.Msg().Header.Get("KV-Operation") == "PURGE" {
			m.settle(e.key, migratePurged)
		} else {
			m.settle(e.key, migrateRewritten)
		}
	case err := <-f.Err():
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			m.settle(e.key, migrateSuperseded)
		} else {
			m.again(e, err)
		}
	case <-ctx.Done():
		m.again(e, ctx.Err())
	}
}

// drain settles every write of the window.
func (m *migration) drain(ctx context.Context, w *window) {
	for len(w.futures) > 0 {
		m.await(ctx, w)
	}
}

func (m *migration) settle(key, result string) {
	m.done[key] = true
	m.counts[result]++
}

// again keeps e for another attempt.
func (m *migration) again(e migrateEntry, err error) {
	m.lastErr[e.key] = err
	m.queued[e.key] = true
	m.retry = append(m.retry, e)
}

func (m *migration) fail(key string, err error) {
	m.settle(key, migrateFailed)
	if n := m.counts[migrateFailed]; n <= migrateLogKeys {
		m.q.log.Warn("entry not migrated", "bucket", m.bucket, "key", key, "attempts", migrateAttempts, "err", err)
	} else if n == migrateLogKeys+1 {
		m.q.log.Warn("more entries not migrated: counted, not named", "bucket", m.bucket)
	}
}

// ttlHeader formats d as a Nats-TTL value, whole seconds rounded up.
func ttlHeader(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10) + "s"
}
