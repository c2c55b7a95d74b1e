// Package publisher sends periodic heartbeats on one NATS subject: the first
// beat at once, then one every interval with random jitter, an immediate beat
// on demand (a status change), and a goodbye beat on a graceful stop.
//
// It is generic over the payload: anything that can be stamped with the
// sender's instance, sequence and clock (wire.Worker and wire.Hive are).
// A beat that cannot be sent is logged and the next tick tries again; a send
// failure never stops the publisher. Beats are never queued while the
// connection is down: connect with ReconnectBufSize(-1) (natsconn does) so a
// reconnect does not replay stale beats, and the publisher sends a fresh one as
// soon as the connection is back.
package publisher
