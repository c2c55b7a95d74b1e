package events

import "errors"

// ErrInvalidConfig is returned (wrapped) for a Config or StreamConfig that cannot work.
var ErrInvalidConfig = errors.New("invalid events config")

// ErrNoHistory is returned (wrapped) by Read when the event stream does not
// exist: no queen with event history has run against this server.
var ErrNoHistory = errors.New("no event history")

// ErrUndecodable is set (wrapped) in a Record whose message is not a msgpack event map.
var ErrUndecodable = errors.New("undecodable event")

// ErrUnknownEvent is returned (wrapped) by ParseFilter for a name that is not
// a registry event type.
var ErrUnknownEvent = errors.New("unknown event type")
