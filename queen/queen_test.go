package queen

import (
	"errors"
	"testing"
	"time"
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
