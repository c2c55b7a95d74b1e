package subscriber

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// Reason says why a message was rejected. The values are stable: they are
// metric labels and log fields.
type Reason string

// Rejection reasons.
const (
	ReasonBadSubject    Reason = "bad_subject"    // not a heartbeat subject, or invalid IDs in it
	ReasonBadHeaders    Reason = "bad_headers"    // missing or wrong Content-Type
	ReasonUnknownSchema Reason = "unknown_schema" // Rbee-Schema or payload v this build does not read
	ReasonOversize      Reason = "oversize"       // payload larger than wire.MaxPayload
	ReasonUndecodable   Reason = "undecodable"    // not a msgpack map
	ReasonBadType       Reason = "bad_type"       // a known key holds a value of the wrong type
	ReasonInvalid       Reason = "invalid"        // values break the schema
	ReasonSpoofed       Reason = "spoofed"        // payload IDs differ from the subject's
	ReasonReplay        Reason = "replay"         // older than the last beat accepted for the instance (set by the queen)
	ReasonInterval      Reason = "interval"       // the beat's TTL, missed beats × interval_ms, would pass the queen's max TTL (set by the queen)
	ReasonConflict      Reason = "conflict"       // another instance holds the key and is beating (set by the queen)
)

// Reasons lists every rejection reason, for pre-creating metric series.
var Reasons = []Reason{ReasonBadSubject, ReasonBadHeaders, ReasonUnknownSchema, ReasonOversize,
	ReasonUndecodable, ReasonBadType, ReasonInvalid, ReasonSpoofed, ReasonReplay, ReasonInterval, ReasonConflict}

// RejectError is the error Decode returns for a refused message.
type RejectError struct {
	Reason  Reason
	Subject string
	Err     error
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("rejected %s (%s): %v", e.Subject, e.Reason, e.Err)
}

func (e *RejectError) Unwrap() error { return e.Err }

// Heartbeat is one accepted beat. Exactly one of Worker, Hive and Queen is
// set, matching Addr.Kind.
type Heartbeat struct {
	Subject string
	Addr    subjects.Address
	// Goodbye is true for a graceful last beat (Rbee-Event: goodbye).
	Goodbye bool
	// Size is the payload size in bytes.
	Size   int
	Worker *wire.Worker
	Hive   *wire.Hive
	Queen  *wire.Queen

	entry *wire.WorkerEntry // Worker's container (WorkerEntry)
}

// WorkerEntry returns a worker beat as a registry entry with rec, nil for
// another kind. For a beat Decode returned, the entry holds the beat's
// Worker itself, not a copy: the two are one value from then on.
func (h *Heartbeat) WorkerEntry(rec wire.Received) *wire.WorkerEntry {
	switch {
	case h.entry != nil && h.Worker == &h.entry.Worker:
		h.entry.Received = rec
		return h.entry
	case h.Worker != nil:
		return &wire.WorkerEntry{Worker: *h.Worker, Received: rec}
	}
	return nil
}

// Meta returns the common keys of whichever payload the beat carries.
func (h *Heartbeat) Meta() *wire.Meta {
	switch {
	case h.Worker != nil:
		return &h.Worker.Meta
	case h.Queen != nil:
		return &h.Queen.Meta
	}
	return &h.Hive.Meta
}

// schemaOf returns the Rbee-Schema a subject kind carries.
func schemaOf(k subjects.Kind) string {
	switch k {
	case subjects.KindHive:
		return wire.SchemaHive
	case subjects.KindQueen:
		return wire.SchemaQueen
	}
	return wire.SchemaWorker
}

func reject(r Reason, subject string, err error) error {
	return &RejectError{Reason: r, Subject: subject, Err: err}
}

// Decode checks and decodes one heartbeat message under scheme. It returns
// the Heartbeat, or a *RejectError naming the reason.
func Decode(scheme subjects.Scheme, msg *nats.Msg) (*Heartbeat, error) {
	addr, err := scheme.Parse(msg.Subject)
	if err != nil {
		return nil, reject(ReasonBadSubject, msg.Subject, err)
	}
	if ct := msg.Header.Get(wire.HeaderContentType); ct != wire.ContentTypeMsgpack {
		return nil, reject(ReasonBadHeaders, msg.Subject, fmt.Errorf("Content-Type %q, want %q", ct, wire.ContentTypeMsgpack))
	}
	want := schemaOf(addr.Kind)
	if s := msg.Header.Get(wire.HeaderSchema); s != want {
		return nil, reject(ReasonUnknownSchema, msg.Subject, fmt.Errorf("%w: Rbee-Schema %q on a %s subject, want %q", wire.ErrUnknownSchema, s, addr.Kind, want))
	}
	hb := &Heartbeat{
		Subject: msg.Subject,
		Addr:    addr,
		Goodbye: msg.Header.Get(wire.HeaderEvent) == wire.EventGoodbye,
		Size:    len(msg.Data),
	}
	// The IDs the payload names, compared with the subject's below.
	var got subjects.Address
	switch addr.Kind {
	case subjects.KindWorker:
		if hb.entry, err = wire.DecodeWorkerBeat(msg.Data); err == nil {
			hb.Worker = &hb.entry.Worker
			got = subjects.Address{Kind: addr.Kind, HiveID: hb.Worker.HiveID, WorkerID: hb.Worker.WorkerID}
		}
	case subjects.KindQueen:
		if hb.Queen, err = wire.DecodeQueen(msg.Data); err == nil {
			got = subjects.Address{Kind: addr.Kind, QueenID: hb.Queen.QueenID}
		}
	default:
		if hb.Hive, err = wire.DecodeHive(msg.Data); err == nil {
			got = subjects.Address{Kind: addr.Kind, HiveID: hb.Hive.HiveID}
		}
	}
	if err != nil {
		return nil, reject(reasonOf(err), msg.Subject, err)
	}
	if got != addr {
		return nil, reject(ReasonSpoofed, msg.Subject, fmt.Errorf("payload says hive %q worker %q queen %q", got.HiveID, got.WorkerID, got.QueenID))
	}
	return hb, nil
}

func reasonOf(err error) Reason {
	switch {
	case errors.Is(err, wire.ErrOversize):
		return ReasonOversize
	case errors.Is(err, wire.ErrUndecodable):
		return ReasonUndecodable
	case errors.Is(err, wire.ErrBadType):
		return ReasonBadType
	case errors.Is(err, wire.ErrUnknownSchema):
		return ReasonUnknownSchema
	}
	return ReasonInvalid
}

// Handler receives decoded beats and rejections. Its functions are called
// from the subscription's delivery goroutine, one message at a time; either
// may be nil.
type Handler struct {
	Beat   func(*Heartbeat)
	Reject func(*RejectError)
}

// Subscribe subscribes to subject (a heartbeat subject or wildcard under
// scheme) and hands every message, decoded, to h. A non-empty queue joins that
// queue group. It returns the subscription or the nats.go error.
func Subscribe(nc *nats.Conn, scheme subjects.Scheme, subject, queue string, h Handler) (*nats.Subscription, error) {
	cb := func(msg *nats.Msg) {
		hb, err := Decode(scheme, msg)
		if err != nil {
			var re *RejectError
			if errors.As(err, &re) && h.Reject != nil {
				h.Reject(re)
			}
			return
		}
		if h.Beat != nil {
			h.Beat(hb)
		}
	}
	if queue != "" {
		return nc.QueueSubscribe(subject, queue, cb)
	}
	return nc.Subscribe(subject, cb)
}
