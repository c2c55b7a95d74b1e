// Package wire defines the heartbeat payloads that workers and hives publish
// and the registry entries the queen stores, their msgpack encoding, headers
// and validation.
//
// Payloads are msgpack maps with snake_case string keys, never positional
// arrays, so that subscribers in any language can decode them by name.
// Unknown keys are ignored on decode (forward compatible); a payload with a
// schema version this package does not know is refused. docs/wire.md
// documents every key.
//
// All functions may be called concurrently.
package wire
