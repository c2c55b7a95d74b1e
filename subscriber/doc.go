// Package subscriber turns NATS messages on heartbeat subjects into typed,
// validated heartbeats, or into typed rejections that say why a message was
// refused. The queen, the hive (for its own workers) and external Go programs
// use it.
//
// It reads the three kinds of beat: worker/1, hive/1 and queen/1 (the
// queens' own beats on <prefix>.hb.queen.<queen_id>).
//
// Checks, in order: the subject is a heartbeat subject with valid IDs; the
// headers declare msgpack and the schema of the subject's kind; the payload
// fits wire.MaxPayload, decodes, and validates; the IDs in the payload
// (hive_id, worker_id, queen_id) equal those in the subject (a mismatch is a
// spoofing attempt). Replay protection and the TTL ceiling need per-sender
// state or configuration and live with the caller (the queen), which reports
// them with ReasonReplay and ReasonInterval.
//
// Decode may be called concurrently; a Handler's functions are called one
// message at a time per subscription.
package subscriber
