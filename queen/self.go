package queen

import (
	"os"

	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/wire"
)

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// newSelfPublisher returns the publisher of the queen's own heartbeat on
// <prefix>.hb.queen.<queen_id>: its state, backlog and write lag, so every
// consumer sees the queen's trouble (and its absence, when its entry in
// rbee_queens expires).
func (q *Queen) newSelfPublisher() (*publisher.Publisher[*wire.Queen], error) {
	pc := publisher.DefaultConfig(q.scheme.Queen(q.cfg.QueenID), wire.SchemaQueen)
	pc.Interval = q.cfg.Interval
	pc.Logger = q.log
	return publisher.New(q.nc, pc, func() *wire.Queen {
		s := q.Status()
		return &s
	})
}
