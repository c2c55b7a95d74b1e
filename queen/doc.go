// Package queen is the registry keeper: it subscribes to every heartbeat in a
// NATS queue group (several queens share the load), validates each beat,
// refuses replays and bounds forgeries, and writes accepted beats into the
// JetStream KV buckets, each entry with its own TTL (Nats-TTL: Config.Missed
// × the beat's own interval). A goodbye deletes the sender's key (DEL = left);
// silence lets the server expire it (PURGE = expired).
//
// # Truth under load
//
// Only the newest beat of a key matters, and a key needs one write per TTL,
// not one per beat. The writer keeps at most one waiting write per key
// (newer beats replace it: coalesced) and at most one in flight, so memory
// is bounded by the number of keys, a key's writes land in order, and a
// beat is never written after a newer one. Goodbyes and marks go first,
// then refreshes of entries due to expire within an interval, then new or
// changed entries, then the other refreshes in the order their stored
// entries would expire. A writer behind for 10 s is
// overloaded, not catching up: from then on a refresh whose entry has
// expired by its estimate goes with the new entries, so it saves the
// entries it still can instead of losing every one in turn. An entry's TTL
// runs from its write, less any wait beyond one interval; a beat whose TTL
// ran out while it waited is shed rather than written, so a dead sender is
// not kept alive by a backlog. A queen alone in its group writes a worker's
// unchanged beat lazily: it waits, replaced by newer beats, until the
// stored entry is due to expire within half an interval (at least 5 s), and
// is then written (with those falling due within the next quarter second:
// one batch), with the TTL left from its acceptance (rounded down), so a
// live worker costs a write every Missed − 1 intervals and a dead one still
// expires one TTL after its last beat. Writes are nats.go jetstream
// asynchronous publishes with a bounded window; beats the subscription
// drops are counted. Every shed, coalesced, superseded, failed or lost
// write is in /metrics.
//
// # Conditional writes
//
// Every write (beat, goodbye, mark, rescue, retry) is judged against the
// newest message of its key the queen knows and sent conditional on that
// message's revision; when another writer changed the key, the server refuses
// it and the queen decides anew from the newer message, as its registry watch
// delivers it or as it reads the key again (conditional.go). So
// across queens an older beat is never written over a newer one, and a key
// that left never comes back from an older beat: a goodbye's DEL names the
// instance that left.
//
// # Several queens
//
// While other queens are in the group, every queen also holds every beat in
// reserve for half an interval and takes the ones no queen took (reserve.go):
// a stopped queen's share is written by the others long before the server
// drops its connection. A queen that finds it was stopped (on the monotonic
// clock) discards the beats of its share that waited meanwhile: the others
// took them. A queen whose entry expired without a goodbye still counts as a
// peer for Config.PeerLinger: the broker hands it its share until it drops
// its connection.
//
// # The queen's own state
//
// The queen beats too (<prefix>.hb.queen.<id>, kept in <prefix>_queens):
// ok, degraded (store failing, overloaded, broker connection down) or
// disrupted (more than Config.DisruptionShare of the entries expired within
// one TTL). Health returns the same for /healthz.
//
// # Liveness beyond the TTL
//
// With Config.Advisories the queen listens to the server's DISCONNECT
// advisories and marks the entries last beating on a closed connection
// disconnected, keeping their expiry; a busy worker whose progress stands
// still for Config.StallAfter intervals is stalled. A beat makes an entry
// alive again.
//
// # Concurrency
//
// Queen keeps the lifecycle contract of package lifecycle. All its methods
// may be called concurrently, also while Start and Stop run (TestLifecycle
// holds this under -race). Config.OnEvent is called one event at a time.
package queen
