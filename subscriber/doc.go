// Package subscriber turns NATS messages on heartbeat subjects into typed,
// validated heartbeats, or into typed rejections that say why a message was
// refused. The queen, the hive (for its own workers) and external Go programs
// use it.
//
// Checks, in order: the subject is a heartbeat subject with valid IDs; the
// headers declare msgpack and a schema this build reads; the payload fits
// wire.MaxPayload, decodes, and validates; the IDs in the payload equal those
// in the subject (a mismatch is a spoofing attempt). Replay protection needs
// per-sender state and lives with the caller (the queen's registry).
package subscriber
