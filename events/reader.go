package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// Query says which events Read delivers.
type Query struct {
	// Since is the oldest event time delivered (the time the stream stored
	// it); zero means the whole history.
	Since time.Time
	// HiveID, if set, keeps only the events of that hive and its workers.
	HiveID string
	// Filter keeps only the events of its types (the zero Filter: every
	// event); the stream filters them, so the others are not read.
	Filter Filter
	// Follow keeps delivering new events after the history, until ctx ends.
	Follow bool
	// CaughtUp, if set, is called once when the history is delivered (also
	// when there is none), before any event stored later.
	CaughtUp func()
}

// Record is one event read from the stream.
type Record struct {
	Event   wire.Event
	Subject string
	// Seq is the event's stream sequence; Stored the time the stream stored it.
	Seq    uint64
	Stored time.Time
	// Err is set (wrapping ErrUndecodable) when the payload is not an event;
	// Event is then empty.
	Err error
}

// Read delivers the events matching q to fn, oldest first, one at a time.
// Without Follow it returns nil once the history is delivered. It returns
// fn's error, ctx's cause when ctx ends (nil for plain cancellation), or an
// error wrapping ErrNoHistory when the stream does not exist.
func Read(ctx context.Context, js jetstream.JetStream, s subjects.Scheme, q Query, fn func(Record) error) error {
	if q.HiveID != "" {
		if err := subjects.ValidateID("hive id", q.HiveID); err != nil {
			return err
		}
	}
	if _, err := js.Stream(ctx, s.EventsStream()); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("%w: stream %s does not exist", ErrNoHistory, s.EventsStream())
		}
		return causeOr(ctx, fmt.Errorf("event stream %s: %w", s.EventsStream(), err))
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: q.Filter.subjects(s, q.HiveID),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if !q.Since.IsZero() {
		since := q.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	if !q.Follow {
		// A replay that cannot recreate its consumer fails rather than waits.
		cfg.MaxResetAttempts = 3
	}
	cons, err := js.OrderedConsumer(ctx, s.EventsStream(), cfg)
	if err != nil {
		return causeOr(ctx, fmt.Errorf("event consumer: %w", err))
	}
	// Creating the consumer retries on its own without ctx: wait for it
	// beside ctx, so that a refused request ends Read with ctx's cause.
	type opened struct {
		it  jetstream.MessagesContext
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		it, err := cons.Messages()
		ch <- opened{it, err}
	}()
	var it jetstream.MessagesContext
	select {
	case <-ctx.Done():
		go func() {
			if o := <-ch; o.it != nil {
				o.it.Stop()
			}
		}()
		return ctxEnd(ctx)
	case o := <-ch:
		if o.err != nil {
			return causeOr(ctx, fmt.Errorf("event consumer: %w", o.err))
		}
		it = o.it
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	caughtUp := false
	markCaughtUp := func() error {
		caughtUp = true
		if q.CaughtUp != nil {
			q.CaughtUp()
		}
		if !q.Follow {
			return errDone
		}
		return nil
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return causeOr(ctx, fmt.Errorf("event consumer info: %w", err))
	}
	// Nothing delivered and nothing pending: there is no history.
	if info.NumPending == 0 && info.Delivered.Consumer == 0 {
		if err := markCaughtUp(); err != nil {
			return nil
		}
	}
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctxEnd(ctx)
			}
			return fmt.Errorf("read events: %w", err)
		}
		rec := record(m)
		if err := fn(rec); err != nil {
			return err
		}
		if md, err := m.Metadata(); err == nil && md.NumPending == 0 && !caughtUp {
			if err := markCaughtUp(); err != nil {
				return nil
			}
		}
	}
}

var errDone = errors.New("caught up")

func record(m jetstream.Msg) Record {
	r := Record{Subject: m.Subject()}
	if md, err := m.Metadata(); err == nil {
		r.Seq, r.Stored = md.Sequence.Stream, md.Timestamp
	}
	ev, err := Decode(m.Data())
	if err != nil {
		r.Err = err
		return r
	}
	r.Event = *ev
	return r
}

// Decode returns the event in data, or an error wrapping ErrUndecodable
// (and wire's reason: ErrOversize, ErrUndecodable, ErrBadType,
// ErrUnknownSchema or ErrInvalid).
func Decode(data []byte) (*wire.Event, error) {
	ev, err := wire.DecodeEvent(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUndecodable, err)
	}
	return ev, nil
}

// causeOr returns ctx's cause when ctx has ended with one (e.g. a
// permissions violation reported by the connection), else err.
func causeOr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return fmt.Errorf("%w (%v)", c, err)
	}
	return err
}

// ctxEnd is Read's result when ctx ends: nil for plain cancellation (the
// caller stopped it), else the cause.
func ctxEnd(ctx context.Context) error {
	c := context.Cause(ctx)
	if errors.Is(c, context.Canceled) {
		return nil
	}
	return c
}
