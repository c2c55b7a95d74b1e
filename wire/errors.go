package wire

import "errors"

// ErrUndecodable is returned (wrapped) for bytes that are not a msgpack map.
var ErrUndecodable = errors.New("undecodable payload")

// ErrBadType is returned (wrapped) for well-formed msgpack whose known keys
// hold values of the wrong type.
var ErrBadType = errors.New("wrong type for a known key")

// ErrUnknownSchema is returned (wrapped) for a schema header or version this
// package does not know.
var ErrUnknownSchema = errors.New("unknown schema")

// ErrOversize is returned (wrapped) for a payload larger than MaxPayload.
var ErrOversize = errors.New("payload too large")

// ErrInvalid is returned (wrapped) for a payload whose values break the schema
// (an invalid ID, an unknown status, a negative count, …).
var ErrInvalid = errors.New("invalid payload")
