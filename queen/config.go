package queen

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
)

// Config configures a Queen.
type Config struct {
	// Prefix is the subject prefix and bucket-name prefix.
	Prefix string
	// Missed is how many of its own intervals an entry lives without a beat:
	// each write carries the TTL Missed × the beat's interval_ms, rounded up
	// to whole seconds.
	Missed int
	// MaxTTL is the buckets' age limit and the ceiling of any entry's TTL; a
	// beat whose TTL would pass it is refused with reason "interval".
	MaxTTL time.Duration
	// StallAfter is how many of its own intervals a busy worker's progress
	// may stand still before the worker is marked stalled.
	StallAfter int
	// DisruptionShare is the share of entries that, expiring within one TTL,
	// makes the queen report its registry disrupted.
	DisruptionShare float64
	// QueenID names this queen in its own heartbeat and in rbee_queens.
	QueenID string
	// Interval is the queen's own heartbeat interval.
	Interval time.Duration
	// Version is reported in the queen's heartbeat.
	Version string
	// Replicas is the number of stream replicas per bucket (1 or, in a cluster, 3).
	Replicas int
	// Queue is the queue group every queen joins, so each beat reaches one queen.
	Queue string
	// MaxInFlight bounds the registry writes awaiting their acknowledgement.
	MaxInFlight int
	// WriteTimeout is how long a registry write may wait for its acknowledgement.
	WriteTimeout time.Duration
	// RequestTimeout bounds JetStream API calls (bucket creation).
	RequestTimeout time.Duration
	// StartTimeout bounds Start's wait for JetStream: a cluster whose members
	// start together needs a while to elect a meta leader.
	StartTimeout time.Duration
	// PendingMsgs and PendingBytes bound the beats buffered in the client
	// before they are decoded; beyond them NATS drops messages, which the
	// queen counts, logs and reports.
	PendingMsgs  int
	PendingBytes int
	// PeerLinger is how long after another queen's entry expired (no
	// goodbye) this queen still holds every beat in reserve for it: a queen
	// that is stopped or cut off keeps its place in the queue group, and is
	// handed its share of the beats, until the broker drops its connection.
	// nats-server's default pings (every 2 minutes, 2 unanswered) drop a
	// silent client 6 to 8 minutes after its last message; the embedded
	// broker's within 8 s. Zero: as soon as the entry expired.
	PeerLinger time.Duration
	// Advisories makes the queen listen to the server's client DISCONNECT
	// advisories and mark the entries of a closed connection disconnected.
	Advisories bool
	// Logger receives the queen's log; nil discards.
	Logger *slog.Logger
	// OnEvent, if set, receives every registry event, one at a time (from the
	// registry watcher). It must not block for long.
	OnEvent func(registry.Event)
	// Refreshes also hands OnEvent the Refreshed events: every value written
	// (a web view sharing the queen's registry watch needs them).
	Refreshes bool
	// Collectors are exported with the queen's own metrics (the event
	// history publisher's, for one).
	Collectors []prometheus.Collector
	// Repair, if set, is called (at most every 5 s) while registry writes
	// fail, to bring the store back: the embedded broker re-enables a
	// JetStream the server disabled after a storage failure.
	Repair func(context.Context) error
	// StoreFailed, if set, reports whether the broker has reported a store
	// write that failed (the embedded broker's Server.StoreFailed, from
	// nats-server's own report of a full disk or a write error). The queen
	// then reports itself degraded at once, instead of after its writes went
	// unanswered for half a second, and calls Repair.
	StoreFailed func() bool
}

// DefaultConfig returns the contract's defaults.
func DefaultConfig() Config {
	return Config{
		Prefix:          subjects.DefaultPrefix,
		Missed:          3,
		MaxTTL:          time.Hour,
		StallAfter:      3,
		DisruptionShare: 0.3,
		QueenID:         DefaultQueenID(),
		Interval:        5 * time.Second,
		Version:         "dev",
		Replicas:        1,
		Queue:           "rbee-queen",
		PeerLinger:      8 * time.Minute, // nats-server's default pings: (ping_max 2 + 2) × 2 min
		MaxInFlight:     2048,            // enough to pipeline the store; small enough that an ack never waits long behind its own window
		WriteTimeout:    5 * time.Second,
		RequestTimeout:  10 * time.Second,
		StartTimeout:    2 * time.Minute,
		PendingMsgs:     1 << 20,   // 1 Mi beats
		PendingBytes:    512 << 20, // 512 MiB
		Advisories:      true,
	}
}

// DefaultQueenID returns the host name (cut to a valid ID) and a random
// four-hex-digit suffix. A queen with a data directory takes StableQueenID
// instead.
func DefaultQueenID() string {
	var r [2]byte
	_, _ = rand.Read(r[:])
	return hostID() + "-" + hex.EncodeToString(r[:])
}

// StableQueenID returns the host name (cut to a valid ID) and four hex
// digits of a hash of dir: the same on every start of a queen with that
// data directory on that host, and distinct for two queens on one host.
func StableQueenID(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return hostID() + "-" + hex.EncodeToString(sum[:2])
}

// hostID returns the host name cut to a valid ID, or "queen".
func hostID() string {
	h, _ := os.Hostname()
	b := make([]byte, 0, len(h))
	for i := 0; i < len(h) && len(b) < subjects.MaxIDLen-5; i++ {
		c := h[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b = append(b, c)
		}
	}
	if len(b) == 0 {
		b = append(b, "queen"...)
	}
	return string(b)
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c Config) Validate() error {
	if _, err := subjects.New(c.Prefix); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if err := subjects.ValidateID("queen id", c.QueenID); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	switch {
	case c.Missed < 2 || c.Missed > 100:
		return fmt.Errorf("%w: missed beats %d outside [2, 100]", ErrInvalidConfig, c.Missed)
	case c.MaxTTL < 10*time.Second || c.MaxTTL > 7*24*time.Hour:
		return fmt.Errorf("%w: max TTL %s outside [10s, 168h]", ErrInvalidConfig, c.MaxTTL)
	case c.StallAfter < 1 || c.StallAfter > 1000:
		return fmt.Errorf("%w: stall-after %d outside [1, 1000]", ErrInvalidConfig, c.StallAfter)
	case c.DisruptionShare <= 0 || c.DisruptionShare > 1:
		return fmt.Errorf("%w: disruption share %v outside (0, 1]", ErrInvalidConfig, c.DisruptionShare)
	case c.Interval < 100*time.Millisecond || c.Interval > time.Hour:
		return fmt.Errorf("%w: queen interval %s outside [100ms, 1h]", ErrInvalidConfig, c.Interval)
	case time.Duration(c.Missed)*c.Interval > c.MaxTTL:
		return fmt.Errorf("%w: the queen's own TTL (%d × %s) passes the max TTL %s", ErrInvalidConfig, c.Missed, c.Interval, c.MaxTTL)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: replicas %d outside [1, 5]", ErrInvalidConfig, c.Replicas)
	case c.Queue == "":
		return fmt.Errorf("%w: queue group is required", ErrInvalidConfig)
	case c.PeerLinger < 0:
		return fmt.Errorf("%w: peer linger %s is negative", ErrInvalidConfig, c.PeerLinger)
	case c.MaxInFlight < 1:
		return fmt.Errorf("%w: MaxInFlight must be at least 1", ErrInvalidConfig)
	case c.WriteTimeout <= 0 || c.RequestTimeout <= 0 || c.StartTimeout <= 0:
		return fmt.Errorf("%w: timeouts must be positive", ErrInvalidConfig)
	case c.PendingMsgs < 1 || c.PendingBytes < 1:
		return fmt.Errorf("%w: pending limits must be positive", ErrInvalidConfig)
	}
	return nil
}

// ttlMs returns the TTL of an entry beating every intervalMs, in whole
// seconds rounded up, as milliseconds.
func (c Config) ttlMs(intervalMs int64) int64 {
	ms := int64(c.Missed) * intervalMs
	return (ms + 999) / 1000 * 1000
}
