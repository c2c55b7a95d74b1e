package queen

import (
	"context"
	"errors"
	"os"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// newSelfPublisher returns the publisher of the queen's own heartbeat on
// <prefix>.hb.queen.<queen_id>: its state, backlog and write lag, so every
// consumer sees the queen's trouble (and its absence, when its entry in
// rbee_queens expires).
func (q *Queen) newSelfPublisher() (*publisher.Publisher[*wire.Queen], error) {
	pc := publisher.DefaultConfig(q.scheme.Queen(q.cfg.QueenID), wire.SchemaQueen)
	pc.Interval = q.cfg.Interval
	pc.Logger = q.log
	return publisher.New(q.nc, pc, func() *wire.Queen {
		s := q.Status()
		return &s
	})
}

// leave deletes this queen's own entry in the queens bucket once it has
// stopped: the goodbye of a queen, so that consumers see it left, not
// expired, even when no queen is left to write its goodbye beat. Like every
// registry write it is conditional on the revision read, and its DEL names
// the instance that left, so no other queen writes an older beat of it over
// the DEL. An entry already gone (the goodbye beat was written), or another
// instance's, is left alone.
func (q *Queen) leave(ctx context.Context) {
	q.mu.Lock()
	js := q.js
	q.mu.Unlock()
	if js == nil || q.self == nil || !q.nc.IsConnected() {
		return
	}
	kv, err := js.KeyValue(ctx, q.scheme.QueensBucket())
	if err == nil {
		var e jetstream.KeyValueEntry
		if e, err = kv.Get(ctx, q.cfg.QueenID); err == nil {
			if inst, _, _, _ := storedIdent(subjects.KindQueen, e.Value()); inst != q.self.InstanceID() {
				return
			}
			msg := nats.NewMsg(q.w.subjectOf(subjects.KindQueen, q.cfg.QueenID))
			msg.Header.Set(kvOperation, "DEL")
			msg.Header.Set(HeaderInstance, q.self.InstanceID())
			msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(e.Revision(), 10))
			_, err = js.PublishMsg(ctx, msg)
		}
	}
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
		q.log.Warn("queen entry not deleted: it expires instead", "bucket", q.scheme.QueensBucket(), "err", err)
	}
}
