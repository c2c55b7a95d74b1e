package wire

import "math"

// StampConn sets the connection the beat is sent on ("<server_id>/<client_id>").
func (m *Meta) StampConn(conn string) { m.Conn = conn }

// SkewMs returns receivedMs − sentMs, saturating instead of overflowing, so
// that a hostile sent_at_ms cannot wrap the stored skew.
func SkewMs(receivedMs, sentMs int64) int64 {
	d := receivedMs - sentMs
	switch {
	case sentMs < 0 && d < receivedMs: // overflowed upwards
		return math.MaxInt64
	case sentMs > 0 && d > receivedMs: // overflowed downwards
		return math.MinInt64
	}
	return d
}
