// Package events keeps the registry's history: every registry event (joined,
// restarted, updated, left, expired, disconnected, reconnected, stalled,
// recovered) is published as a msgpack wire.Event on
// <prefix>.evt.<event>.<hive_id>[.<worker_id>] and captured by the JetStream
// stream <prefix>_events, bounded by age and size.
//
// EnsureStream creates or updates the stream. A Publisher takes
// registry.Event values (the queen's OnEvent) and publishes them with a
// Nats-Msg-Id derived from the KV key, revision and event, so that several
// queens seeing the same KV change store it once (the stream's duplicates
// window). Read replays the history since a time, optionally for one hive,
// and optionally follows it.
package events
