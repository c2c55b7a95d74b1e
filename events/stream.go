package events

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
)

// StreamConfig bounds the event stream.
type StreamConfig struct {
	// MaxAge is how long an event is kept.
	MaxAge time.Duration
	// MaxBytes is the most the stream stores; the oldest events go first.
	MaxBytes int64
	// Duplicates is the window within which a second event with the same
	// Nats-Msg-Id is dropped by the server. It is shortened to MaxAge when longer.
	Duplicates time.Duration
	// Replicas is the number of stream replicas (1, or 3 in a cluster of three).
	Replicas int
	// Storage is where the stream keeps its events.
	Storage jetstream.StorageType
}

// DefaultStreamConfig returns a week of history, at most 1 GiB, on file.
func DefaultStreamConfig() StreamConfig {
	return StreamConfig{
		MaxAge:     7 * 24 * time.Hour,
		MaxBytes:   1 << 30,         // 1 GiB
		Duplicates: 2 * time.Minute, // the JetStream default
		Replicas:   1,
		Storage:    jetstream.FileStorage,
	}
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c StreamConfig) Validate() error {
	switch {
	case c.MaxAge < time.Second:
		return fmt.Errorf("%w: event max age %s is below 1s", ErrInvalidConfig, c.MaxAge)
	case c.MaxBytes < 1<<10:
		return fmt.Errorf("%w: event max bytes %d is below 1 KiB", ErrInvalidConfig, c.MaxBytes)
	case c.Duplicates < 0:
		return fmt.Errorf("%w: negative duplicates window %s", ErrInvalidConfig, c.Duplicates)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: event stream replicas %d, want 1 to 5", ErrInvalidConfig, c.Replicas)
	}
	return nil
}

// jetStreamConfig returns the stream definition for scheme s.
func (c StreamConfig) jetStreamConfig(s subjects.Scheme) jetstream.StreamConfig {
	dup := c.Duplicates
	if dup == 0 || dup > c.MaxAge {
		dup = min(2*time.Minute, c.MaxAge)
	}
	return jetstream.StreamConfig{
		Name:        s.EventsStream(),
		Description: "rbee registry events",
		Subjects:    []string{s.AllEvents()},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      c.MaxAge,
		MaxBytes:    c.MaxBytes,
		Duplicates:  dup,
		Replicas:    c.Replicas,
		Storage:     c.Storage,
	}
}

// EnsureStream creates the event stream of scheme s, or updates its limits
// if it exists, and returns it. It returns an error wrapping
// ErrInvalidConfig for a bad c, or the JetStream API error.
func EnsureStream(ctx context.Context, js jetstream.JetStream, s subjects.Scheme, c StreamConfig) (jetstream.Stream, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	st, err := js.CreateOrUpdateStream(ctx, c.jetStreamConfig(s))
	if err != nil {
		return nil, fmt.Errorf("event stream %s: %w", s.EventsStream(), err)
	}
	return st, nil
}

// ParseSize reads a byte size for a flag such as --events-max-bytes: a
// whole number with an optional unit, B, KiB, MiB, GiB, TiB (powers of
// 1024) or KB, MB, GB, TB (powers of 1000), e.g. "1GiB" or "500MB". It
// returns an error wrapping ErrInvalidConfig for anything else.
func ParseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || (n > 0 && mult > math.MaxInt64/n) {
		return 0, fmt.Errorf("%w: size %q: want a whole number and a unit such as 1GiB or 500MB", ErrInvalidConfig, s)
	}
	return n * mult, nil
}
