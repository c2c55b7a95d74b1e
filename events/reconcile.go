package events

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// Roster is a set of registry keys, "worker:<hive>.<worker>" and
// "hive:<hive>".
type Roster map[string]bool

// Has reports whether the roster holds key of kind.
func (r Roster) Has(kind subjects.Kind, key string) bool { return r[rosterKey(kind, key)] }

// Live records the keys of the registry events a queen sees (its OnEvent),
// so that Reconcile leaves a key that changed since the registry loaded to
// the live history. Its methods may be called concurrently.
type Live struct {
	mu      sync.Mutex
	keys    Roster
	stopped bool
}

// OnEvent records ev's key, unless ev is a refresh or Stop was called. It
// fits queen.Config.OnEvent.
func (l *Live) OnEvent(ev registry.Event) {
	if !Publishes(ev) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	if l.keys == nil {
		l.keys = Roster{}
	}
	l.keys[rosterKey(ev.Kind, ev.Key)] = true
}

// Has reports whether an event of key was recorded.
func (l *Live) Has(kind subjects.Kind, key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.keys.Has(kind, key)
}

// Stop ends the recording and forgets the keys.
func (l *Live) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped, l.keys = true, nil
}

// RosterSource is what TakeRoster reads: the queen's registry mirror.
type RosterSource interface {
	Workers() []*wire.WorkerEntry
	Hives() []*wire.HiveEntry
}

// TakeRoster returns the keys src holds now. Take it right after the
// registry is loaded, before live events arrive, so that a key that goes
// afterwards is left to the live history.
func TakeRoster(src RosterSource) Roster {
	r := Roster{}
	for _, w := range src.Workers() {
		r[rosterKey(subjects.KindWorker, subjects.WorkerKey(w.HiveID, w.WorkerID))] = true
	}
	for _, h := range src.Hives() {
		r[rosterKey(subjects.KindHive, subjects.HiveKey(h.HiveID))] = true
	}
	return r
}

func rosterKey(kind subjects.Kind, key string) string { return string(kind) + ":" + key }

// Reconcile brings the history up to what the registry shows after a time
// without a queen: every worker or hive whose last event in the history
// says it was present (not left, not expired), and for which present
// reports false, died while no queen watched: an expired event is published for it,
// at now, with the last event's revision, model and instance, and
// previous "unseen". The history's last event per key is read with the
// stream's last-per-subject delivery (at most one message per event type
// and key). Several queens reconciling at once store each event once (the
// Nats-Msg-Id is derived from the last event). It returns the number of
// events stored (duplicates not counted), or an error wrapping ErrNoHistory when the stream does
// not exist.
func Reconcile(ctx context.Context, js jetstream.JetStream, s subjects.Scheme, queenID string, present func(kind subjects.Kind, key string) bool) (int, error) {
	last, err := lastEvents(ctx, js, s)
	if err != nil {
		return 0, err
	}
	n := 0
	now := time.Now().UnixMilli()
	for _, ev := range last {
		if present(subjects.Kind(ev.Kind), ev.Key) || ev.Event == string(registry.Left) || ev.Event == string(registry.Expired) {
			continue
		}
		out := *ev
		out.Event, out.AtMs, out.QueenID, out.Previous = string(registry.Expired), now, queenID, Unseen
		out.Liveness = ""
		msgID := out.Kind + ":" + out.Key + ":" + strconv.FormatUint(out.Revision, 10) + ":" + Unseen
		msg, err := wireMessage(s, &out, msgID)
		if err != nil {
			continue // not valid subject tokens: no such event was stored
		}
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			return n, fmt.Errorf("publish expired event of %s: %w", out.Key, err)
		}
		if !ack.Duplicate {
			n++
		}
	}
	return n, nil
}

// Unseen is the previous field of an expired event Reconcile publishes: the
// entry expired while no queen watched, at some time before at_ms.
const Unseen = "unseen"

// lastEvents returns the last event of each worker and hive key in the
// history, by roster key.
func lastEvents(ctx context.Context, js jetstream.JetStream, s subjects.Scheme) (map[string]*wire.Event, error) {
	if _, err := js.Stream(ctx, s.EventsStream()); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("%w: stream %s does not exist", ErrNoHistory, s.EventsStream())
		}
		return nil, err
	}
	cons, err := js.OrderedConsumer(ctx, s.EventsStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.AllEvents()},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("event consumer: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("event consumer info: %w", err)
	}
	type seen struct {
		ev  *wire.Event
		seq uint64
	}
	by := map[string]seen{}
	pending := info.NumPending
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			pending = md.NumPending
			ev, err := Decode(m.Data())
			if err != nil || (ev.Kind != string(subjects.KindWorker) && ev.Kind != string(subjects.KindHive)) {
				continue
			}
			k := rosterKey(subjects.Kind(ev.Kind), ev.Key)
			if cur, ok := by[k]; !ok || md.Sequence.Stream > cur.seq {
				by[k] = seen{ev, md.Sequence.Stream}
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("read events: %w", err)
		}
		if got == 0 {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			break // nothing more arrives: the count was of messages since removed
		}
	}
	out := make(map[string]*wire.Event, len(by))
	for k, v := range by {
		out[k] = v.ev
	}
	return out, nil
}

// wireMessage returns the message publishing we with msgID, as Message does.
func wireMessage(s subjects.Scheme, we *wire.Event, msgID string) (*nats.Msg, error) {
	if !subjects.ValidID(we.HiveID) || (we.WorkerID != "" && !subjects.ValidID(we.WorkerID)) || !validEventType(we.Event) {
		return nil, fmt.Errorf("event %q on %q: not valid subject tokens", we.Event, we.Key)
	}
	data, err := wire.Marshal(we)
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(s.Event(we.Event, we.HiveID, we.WorkerID))
	msg.Data = data
	msg.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
	msg.Header.Set(wire.HeaderSchema, Schema)
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	return msg, nil
}
