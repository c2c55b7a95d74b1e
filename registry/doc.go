// Package registry reads the worker and hive registries kept in JetStream KV:
// it mirrors both buckets in memory and turns their changes into events —
// joined, restarted (a new instance_id), updated (status, health, model or
// device changed), left (a goodbye: delete marker) and expired (no beat within
// the TTL: the server's purge marker).
//
// The queen, `rbee watch`, `rbee status` and the HTTP API all read the
// registry through this package; it needs no queen running. Entries present
// when a Watcher starts are loaded as the initial state and produce no events,
// so a restarted reader does not announce every live worker as joined.
package registry
