// Package registry reads the registries kept in JetStream KV (workers,
// hives and queens): it mirrors the buckets in memory and turns their changes
// into events — joined, restarted (a new instance_id), updated (status,
// health, model or device changed), disconnected / reconnected and stalled /
// recovered (the queen's liveness key changed), left (a goodbye: delete
// marker) and expired (no beat within the entry's TTL: the server's purge
// marker).
//
// The queen, `rbee watch`, `rbee status`, the web view and the HTTP API all
// read the registry through this package; it needs no queen running. Entries
// present when a Watcher starts are loaded as the initial state and produce
// no events, so a restarted reader does not announce every live worker as
// joined (Config.Refreshes delivers them, and every other write, as
// Refreshed events for readers that must see every value, as the queen does).
//
// Each bucket is followed by a KVWatch, which resumes after any gap
// (connection loss, server restart) and then re-lists the bucket, so that a
// removal whose marker aged out during the gap is still reported: as
// expired, unless the key's last message in the stream is a delete marker
// (left). Such events carry Relisted. Chaos runs and tests that follow a
// bucket use the same KVWatch.
//
// A Watcher's methods may be called concurrently. Config.OnEvent is called
// one event at a time across all buckets (TestEventsOneAtATime).
package registry
