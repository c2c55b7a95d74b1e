package queen

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/wire"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		f    func(c *Config)
		ok   bool
	}{
		{"default", func(c *Config) {}, true},
		{"bad prefix", func(c *Config) { c.Prefix = "a.b" }, false},
		{"one missed beat", func(c *Config) { c.Missed = 1 }, false},
		{"short max ttl", func(c *Config) { c.MaxTTL = time.Second }, false},
		{"no stall-after", func(c *Config) { c.StallAfter = 0 }, false},
		{"bad queen id", func(c *Config) { c.QueenID = "a.b" }, false},
		{"share above one", func(c *Config) { c.DisruptionShare = 1.5 }, false},
		{"own TTL past the ceiling", func(c *Config) { c.Interval, c.MaxTTL = 30*time.Minute, time.Hour }, false},
		{"no replicas", func(c *Config) { c.Replicas = 0 }, false},
		{"too many replicas", func(c *Config) { c.Replicas = 7 }, false},
		{"no queue", func(c *Config) { c.Queue = "" }, false},
		{"no in-flight", func(c *Config) { c.MaxInFlight = 0 }, false},
		{"no timeout", func(c *Config) { c.RequestTimeout = 0 }, false},
		{"no pending", func(c *Config) { c.PendingMsgs = 0 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.f(&c)
			err := c.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("%v does not wrap ErrInvalidConfig", err)
			}
		})
	}
	if _, err := New(nil, DefaultConfig()); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("New without a connection: %v", err)
	}
}

// TestDisruptionReason: a disrupted registry says its latest cause, many
// expiries within one TTL or the queen's own stop, and expiries within a
// stop's disruption do not end it sooner.
func TestDisruptionReason(t *testing.T) {
	q, err := New(&nats.Conn{}, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	want := func(when, reason string) {
		t.Helper()
		if s, r := q.state(writerStats{}); s != wire.QueenDisrupted || r != reason {
			t.Fatalf("%s: state %s (%q), want disrupted (%q)", when, s, r, reason)
		}
	}
	now := time.Now()
	for range 4 {
		q.health.expired(q.log, now, 60_000, 6)
	}
	want("after 4 of 10 expired", "registry disrupted: 4 of 10 entries expired within one TTL")
	q.health.stopped(q.log, now, 90*time.Second)
	want("after a stop", "registry disrupted: the queen was stopped for 90.0s")
	q.health.expired(q.log, now, 60_000, 5)
	want("after one more expiry", "registry disrupted: 5 of 10 entries expired within one TTL")
	if until := q.health.disruptedUntil; until.Before(now.Add(90 * time.Second)) {
		t.Fatalf("an expiry ended the stop's disruption sooner: until %v, want %v", until, now.Add(90*time.Second))
	}
}
