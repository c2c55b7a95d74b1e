package queen

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MarkerTTL is how long a bucket keeps the delete and purge markers that
// tell watchers an entry left or expired.
const MarkerTTL = time.Minute

// BucketConfig returns the KV configuration of a registry bucket. Entries
// carry their own TTL (Nats-TTL); the bucket's age limit maxTTL is only a
// ceiling. Expired keys leave a purge marker for MarkerTTL so that watchers
// see the expiry.
func BucketConfig(name string, maxTTL time.Duration, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         name,
		Description:    "rbee registry: each entry expires after missed beats × its own interval (at most " + maxTTL.String() + ")",
		History:        1,
		TTL:            maxTTL,
		LimitMarkerTTL: MarkerTTL,
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
	}
}

// CreateBucket creates the registry bucket cfg describes (BucketConfig), or
// updates it to cfg, and returns it.
//
// A new bucket of one replica is in the stream's async persist mode: the
// server writes a few milliseconds of writes to disk together, where the
// default mode makes a system call per write. A crash of the server loses
// those milliseconds: the next beats write them again, and a queen whose
// acknowledged write was lost finds the key's revision changed and reads
// it again (conditional.go). The server cannot change the mode: a bucket
// keeps its own, and an async one cannot be given replicas. nats.go's KV
// API cannot set it, so the stream is made as that API makes it
// (bucketStream) and read back as a bucket.
func CreateBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	mode := jetstream.DefaultPersistMode
	if cfg.Replicas <= 1 {
		mode = jetstream.AsyncPersistMode
	}
	st, err := js.Stream(ctx, bucketStreamPrefix+cfg.Bucket)
	switch {
	case err == nil:
		mode = st.CachedInfo().Config.PersistMode
		if mode == jetstream.AsyncPersistMode && cfg.Replicas > 1 {
			return nil, fmt.Errorf("%w: delete it (nats kv del %s) while no queen runs; the queens make it again, and it fills from the next beats",
				ErrBucketUnreplicable, cfg.Bucket)
		}
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, err
	}
	if _, err := js.CreateOrUpdateStream(ctx, bucketStream(cfg, mode)); err != nil {
		return nil, err
	}
	return js.KeyValue(ctx, cfg.Bucket)
}

// bucketStreamPrefix begins the name of a bucket's stream (ADR-8).
const bucketStreamPrefix = "KV_"

// bucketStream returns the stream configuration nats.go's KV API makes for
// cfg (its prepareKeyValueConfig, for the fields BucketConfig sets; a test
// compares the two), in persist mode mode.
func bucketStream(cfg jetstream.KeyValueConfig, mode jetstream.PersistModeType) jetstream.StreamConfig {
	dup := 2 * time.Minute
	if cfg.TTL > 0 && cfg.TTL < dup {
		dup = cfg.TTL
	}
	return jetstream.StreamConfig{
		Name:                   bucketStreamPrefix + cfg.Bucket,
		Description:            cfg.Description,
		Subjects:               []string{"$KV." + cfg.Bucket + ".>"},
		MaxMsgsPerSubject:      int64(max(cfg.History, 1)),
		MaxBytes:               -1,
		MaxAge:                 cfg.TTL,
		MaxMsgSize:             -1,
		Storage:                cfg.Storage,
		Replicas:               max(cfg.Replicas, 1),
		AllowRollup:            true,
		DenyDelete:             true,
		Duplicates:             dup,
		MaxMsgs:                -1,
		MaxConsumers:           -1,
		AllowDirect:            true,
		Discard:                jetstream.DiscardNew,
		AllowMsgTTL:            cfg.LimitMarkerTTL != 0,
		SubjectDeleteMarkerTTL: cfg.LimitMarkerTTL,
		PersistMode:            mode,
	}
}

func (q *Queen) ensureBuckets(ctx context.Context) error {
	for _, name := range []string{q.scheme.WorkersBucket(), q.scheme.HivesBucket(), q.scheme.QueensBucket()} {
		var from time.Duration
		if err := q.retryUntilReady(ctx, "bucket "+name, func(ctx context.Context) error {
			// An attempt that raised the age limit but failed after it
			// leaves the next attempt nothing to see: keep what it saw.
			f, err := q.ensureBucket(ctx, name)
			from = max(from, f)
			return err
		}); err != nil {
			return err
		}
		if from > 0 {
			mctx, cancel := context.WithTimeout(ctx, migrateTimeout)
			err := q.migrate(mctx, name, from)
			cancel()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// ensureBucket creates or updates one bucket. A bucket of the older scheme
// (one TTL for every entry, as its age limit) has its age limit raised to
// the ceiling, so nothing expires early; ensureBucket then returns the old
// age limit, and the caller migrates the entries (migrate).
func (q *Queen) ensureBucket(ctx context.Context, name string) (migrateFrom time.Duration, err error) {
	var oldTTL time.Duration
	if kv, err := q.js.KeyValue(ctx, name); err == nil {
		if st, err := kv.Status(ctx); err == nil {
			if old := st.TTL(); old != q.cfg.MaxTTL {
				oldTTL = old
				q.log.Warn("migrating the bucket to per-entry TTLs: every queen should run with the same --max-ttl",
					"bucket", name, "age_limit_from", old, "to", q.cfg.MaxTTL)
			}
			if info, ok := st.(*jetstream.KeyValueBucketStatus); ok && info.StreamInfo().Config.Replicas != q.cfg.Replicas {
				q.log.Warn("changing the bucket's replicas: every queen should run with the same --replicas",
					"bucket", name, "from", info.StreamInfo().Config.Replicas, "to", q.cfg.Replicas)
			}
		}
	} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return 0, fmt.Errorf("bucket %s: %w", name, err)
	}
	kv, err := CreateBucket(ctx, q.js, BucketConfig(name, q.cfg.MaxTTL, q.cfg.Replicas))
	if err != nil {
		return 0, fmt.Errorf("bucket %s: %w", name, explainBucketError(err, q.cfg.Replicas))
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("bucket %s status: %w", name, err)
	}
	if st.TTL() != q.cfg.MaxTTL || st.LimitMarkerTTL() != MarkerTTL {
		return 0, fmt.Errorf("bucket %s has age limit %s and marker TTL %s, want %s and %s", name, st.TTL(), st.LimitMarkerTTL(), q.cfg.MaxTTL, MarkerTTL)
	}
	if oldTTL > 0 && oldTTL < q.cfg.MaxTTL {
		return oldTTL, nil
	}
	return 0, nil
}

// explainBucketError turns the JetStream errors a user can cause with flags
// into one line saying what is wrong.
func explainBucketError(err error, replicas int) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && replicas > 1 {
		if apiErr.ErrorCode == jsReplicasNotSupported {
			return fmt.Errorf("--replicas %d needs a JetStream cluster of at least %d servers; this server is not clustered", replicas, replicas)
		}
	}
	return err
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
	jsReplicasNotSupported  jetstream.ErrorCode = 10074
)
