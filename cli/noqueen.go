package cli

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
)

// noQueenIntervals is how many of an agent's intervals may pass with no
// queen in the queens bucket before the agent says so.
const noQueenIntervals = 3

// watchQueens starts watchQueens for an agent unless it connects with an
// identity of its own (an rbee token, --creds, --nkey): a worker or hive
// identity may publish its beats and nothing more, and a read of the bucket
// would only count as a permissions violation at the broker.
func (c *common) watchQueens(ctx context.Context, nc *nats.Conn, interval time.Duration, log *slog.Logger) {
	if c.creds != "" || c.nkey != "" || c.token != "" {
		log.Debug("not watching for queens: an agent's own identity may not read the queens bucket")
		return
	}
	go watchQueens(ctx, nc, c.scheme(), interval, log)
}

// watchQueens runs until ctx ends, reading the queens bucket once per
// interval: an agent beating into a server no queen keeps looks healthy in
// its own log, so when no queen is there for noQueenIntervals in a row it
// logs that once (and once again when a queen comes back). An identity not
// allowed to read the bucket (the worker of the permission template) cannot
// tell, and the watch ends quietly.
func watchQueens(ctx context.Context, nc *nats.Conn, s subjects.Scheme, interval time.Duration, log *slog.Logger) {
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	bucket := s.QueensBucket()
	t := time.NewTicker(interval)
	defer t.Stop()
	missing, warned := 0, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !nc.IsConnected() {
			continue // the connection's own log says why
		}
		present, err := anyQueen(ctx, js, bucket, interval)
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("cannot read the queens bucket; not watching for queens", "bucket", bucket, "err", err)
			}
			return
		}
		if present {
			if warned {
				log.Info("a queen keeps the registry again", "bucket", bucket)
			}
			missing, warned = 0, false
			continue
		}
		missing++
		if missing >= noQueenIntervals && !warned {
			warned = true
			log.Warn("no queen has taken these beats: the queens bucket is empty; start rbee queen against this server, or point this agent at the queen's (--nats-url)",
				"intervals", missing, "bucket", bucket, "server", nc.ConnectedUrlRedacted())
		}
	}
}

// anyQueen reports whether the queens bucket holds a live queen's entry.
func anyQueen(ctx context.Context, js jetstream.JetStream, bucket string, limit time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, max(limit, 2*time.Second))
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = keys.Stop() }()
	for range keys.Keys() {
		return true, nil
	}
	return false, nil
}
