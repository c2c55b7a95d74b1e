package web

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/rbee/heartbeat/registry"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
)

// Config configures a View.
type Config struct {
	// JetStream reaches the registry buckets; required.
	JetStream jetstream.JetStream
	// Scheme names the buckets.
	Scheme subjects.Scheme
	// Events is how many recent registry events a page receives when it connects.
	Events int
	// FlushEvery is the shortest time between two entry updates sent to the
	// pages: changes within it are coalesced into one message, so a fleet
	// beating at once costs a page one render.
	FlushEvery time.Duration
	// KeepAlive is the interval of comment lines on an idle stream, so that
	// proxies and browsers keep it open.
	KeepAlive time.Duration
	// ClientBuffer bounds the messages queued for one page. A page further
	// behind is disconnected; its browser reconnects and gets a fresh snapshot.
	ClientBuffer int
	// WriteTimeout bounds one write to a page's connection.
	WriteTimeout time.Duration
	// Logger receives the view's log; nil discards.
	Logger *slog.Logger
	// Watcher, if set, is a registry watch to share (the queen's own), so
	// the process reads every write once: the view then does not watch the
	// registry itself, and whoever owns the watch must hand every event,
	// refreshes included, to View.OnEvent.
	Watcher *registry.Watcher
}

// DefaultConfig returns a Config for js with the default scheme.
func DefaultConfig(js jetstream.JetStream) Config {
	return Config{
		JetStream:    js,
		Scheme:       subjects.Default(),
		Events:       200,
		FlushEvery:   250 * time.Millisecond, // at most 4 renders a second
		KeepAlive:    15 * time.Second,
		ClientBuffer: 256, // messages
		WriteTimeout: 10 * time.Second,
	}
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c Config) Validate() error {
	switch {
	case c.JetStream == nil:
		return fmt.Errorf("%w: JetStream is required", ErrInvalidConfig)
	case c.Scheme.Prefix() == "":
		return fmt.Errorf("%w: Scheme is required (subjects.New)", ErrInvalidConfig)
	case c.Events < 0:
		return fmt.Errorf("%w: Events is negative", ErrInvalidConfig)
	case c.FlushEvery <= 0 || c.KeepAlive <= 0 || c.WriteTimeout <= 0:
		return fmt.Errorf("%w: FlushEvery, KeepAlive and WriteTimeout must be positive", ErrInvalidConfig)
	case c.ClientBuffer < 1:
		return fmt.Errorf("%w: ClientBuffer must be at least 1", ErrInvalidConfig)
	}
	return nil
}
