package queen

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
)

// Config configures a Queen.
type Config struct {
	// Prefix is the subject prefix and bucket-name prefix.
	Prefix string
	// WorkerTTL and HiveTTL are the bucket TTLs: missed beats × interval.
	WorkerTTL time.Duration
	HiveTTL   time.Duration
	// Replicas is the number of stream replicas per bucket (1 or, in a cluster, 3).
	Replicas int
	// Queue is the queue group every queen joins, so each beat reaches one queen.
	Queue string
	// MaxInFlight bounds the KV writes awaiting their acknowledgement.
	MaxInFlight int
	// WriteRetries is how many times a failed KV write is retried.
	WriteRetries int
	// RequestTimeout bounds JetStream API calls (bucket creation).
	RequestTimeout time.Duration
	// PendingMsgs and PendingBytes bound the beats buffered in the client
	// before they are handled; beyond them NATS drops messages (slow consumer).
	PendingMsgs  int
	PendingBytes int
	// Logger receives the queen's log; nil discards.
	Logger *slog.Logger
	// OnEvent, if set, receives every registry event (from the watcher's goroutine).
	OnEvent func(registry.Event)
}

// DefaultConfig returns the contract's defaults: 3 missed beats of 30 s.
func DefaultConfig() Config {
	return Config{
		Prefix:         subjects.DefaultPrefix,
		WorkerTTL:      90 * time.Second,
		HiveTTL:        90 * time.Second,
		Replicas:       1,
		Queue:          "rbee-queen",
		MaxInFlight:    8192,
		WriteRetries:   3,
		RequestTimeout: 10 * time.Second,
		PendingMsgs:    1 << 20,   // 1 Mi beats
		PendingBytes:   512 << 20, // 512 MiB
	}
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c Config) Validate() error {
	if _, err := subjects.New(c.Prefix); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	switch {
	case c.WorkerTTL < time.Second || c.HiveTTL < time.Second:
		return fmt.Errorf("%w: TTLs must be at least 1s (worker %s, hive %s)", ErrInvalidConfig, c.WorkerTTL, c.HiveTTL)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: replicas %d outside [1, 5]", ErrInvalidConfig, c.Replicas)
	case c.Queue == "":
		return fmt.Errorf("%w: queue group is required", ErrInvalidConfig)
	case c.MaxInFlight < 1:
		return fmt.Errorf("%w: MaxInFlight must be at least 1", ErrInvalidConfig)
	case c.WriteRetries < 0:
		return fmt.Errorf("%w: WriteRetries is negative", ErrInvalidConfig)
	case c.RequestTimeout <= 0:
		return fmt.Errorf("%w: RequestTimeout must be positive", ErrInvalidConfig)
	case c.PendingMsgs < 1 || c.PendingBytes < 1:
		return fmt.Errorf("%w: pending limits must be positive", ErrInvalidConfig)
	}
	return nil
}
