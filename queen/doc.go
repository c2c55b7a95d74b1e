// Package queen is the registry keeper: it subscribes to every heartbeat in a
// NATS queue group (several queens share the load), validates each beat,
// refuses replays, and writes accepted beats into the JetStream KV buckets
// whose TTL expires silent senders. A goodbye deletes the sender's key.
//
// Writes are asynchronous JetStream publishes with a bounded number in
// flight, so the queen's ingest is not capped by one KV round trip per beat;
// a write that fails is retried unless a newer beat for the same key has
// superseded it, and a write given up on is counted and logged, never lost
// silently. Liveness never depends on the sender's clock: the TTL runs on the
// server.
package queen
