package queen

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/subjects"
)

// DisconnectAdvisories is the subject of the server's client DISCONNECT
// advisories for every account this connection can see: the embedded broker
// imports its own account's into it (see package embedded); an external
// server needs the same import, or the queen falls back to the TTL.
const DisconnectAdvisories = "$SYS.ACCOUNT.*.DISCONNECT"

// advisory is the part of io.nats.server.advisory.v1.client_disconnect the
// queen reads.
type advisory struct {
	Timestamp time.Time `json:"timestamp"`
	Server    struct {
		ID string `json:"id"`
	} `json:"server"`
	Client struct {
		ID uint64 `json:"id"`
	} `json:"client"`
	Reason string `json:"reason"`
}

// serverShutdown is the reason a server gives for the connections it closes
// as it shuts down: its clients reconnect to another server and beat at
// once, so they are not marked.
const serverShutdown = "Server Shutdown"

// subscribeAdvisories marks the entries of a closed connection disconnected.
// The queens share the advisories in their queue group, so each closed
// connection is handled (and each entry marked) once; every queen knows every
// entry's connection from the registry.
func (q *Queen) subscribeAdvisories() error {
	sub, err := q.nc.QueueSubscribe(DisconnectAdvisories, q.cfg.Queue, q.onDisconnect)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", DisconnectAdvisories, err)
	}
	q.subs = append(q.subs, sub)
	return nil
}

// closeGrace is how long the queen waits after a DISCONNECT before it marks
// the connection's entries: a goodbye sent just before the close travels on
// the beats' subscription, which may deliver it after the advisory; within
// the grace it removes the entry first and nothing is marked.
const closeGrace = 250 * time.Millisecond

func (q *Queen) onDisconnect(msg *nats.Msg) {
	var a advisory
	if err := json.Unmarshal(msg.Data, &a); err != nil || a.Server.ID == "" || a.Reason == serverShutdown {
		return
	}
	conn := a.Server.ID + "/" + strconv.FormatUint(a.Client.ID, 10)
	time.AfterFunc(closeGrace, func() { q.markClosed(conn, a.Timestamp) })
}

// markClosed marks the live entries last beating on conn disconnected.
func (q *Queen) markClosed(conn string, at time.Time) {
	now := time.Now()
	q.reserve.peerClosed(q, conn)
	targets := q.w.closed(conn, now.UnixMilli())
	for _, tg := range targets {
		q.markDisconnected(tg, conn, now.UnixMilli())
	}
	if len(targets) > 0 && !at.IsZero() {
		q.metrics.advisoryLag.Observe(max(0, now.Sub(at).Seconds()))
	}
}

// markDisconnected queues the disconnected mark of one entry. The entry
// keeps its expiry; a beat from any connection makes it alive again.
func (q *Queen) markDisconnected(tg target, conn string, nowMs int64) {
	var (
		from *op
		rev  uint64
	)
	if w := q.Registry(); w != nil {
		switch tg.kind {
		case subjects.KindWorker:
			if e, r, ok := w.Worker(tg.key); ok && e.Conn == conn {
				c := *e
				from, rev = &op{kind: tg.kind, key: tg.key, worker: &c, instance: e.InstanceID, seq: e.Seq, conn: conn,
					acceptedMs: e.ReceivedAtMs, ttlMs: q.cfg.ttlMs(e.IntervalMs)}, r
			}
		case subjects.KindHive:
			if e, r, ok := w.Hive(tg.key); ok && e.Conn == conn {
				c := *e
				from, rev = &op{kind: tg.kind, key: tg.key, hive: &c, instance: e.InstanceID, seq: e.Seq, conn: conn,
					acceptedMs: e.ReceivedAtMs, ttlMs: q.cfg.ttlMs(e.IntervalMs)}, r
			}
		}
	}
	q.metrics.marks.WithLabelValues(string(tg.kind)).Inc()
	q.w.mark(tg.kind, tg.key, conn, from, rev, nowMs)
}
