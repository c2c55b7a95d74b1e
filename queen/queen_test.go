package queen

import (
	"errors"
	"testing"
	"time"

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
		{"short worker ttl", func(c *Config) { c.WorkerTTL = 500 * time.Millisecond }, false},
		{"short hive ttl", func(c *Config) { c.HiveTTL = 0 }, false},
		{"no replicas", func(c *Config) { c.Replicas = 0 }, false},
		{"too many replicas", func(c *Config) { c.Replicas = 7 }, false},
		{"no queue", func(c *Config) { c.Queue = "" }, false},
		{"no in-flight", func(c *Config) { c.MaxInFlight = 0 }, false},
		{"negative retries", func(c *Config) { c.WriteRetries = -1 }, false},
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

func meta(inst string, seq uint64) *wire.Meta { return &wire.Meta{InstanceID: inst, Seq: seq} }

func TestTrackerAdmit(t *testing.T) {
	tr := newTracker()
	steps := []struct {
		name      string
		inst      string
		seq       uint64
		now       int64
		ok        bool
		firstSeen int64
	}{
		{"first beat", "a", 1, 100, true, 100},
		{"next beat", "a", 2, 200, true, 100},
		{"replay", "a", 2, 300, false, 0},
		{"older", "a", 1, 300, false, 0},
		{"gap is fine", "a", 9, 400, true, 100},
		{"restart", "b", 1, 500, true, 500},
		{"old instance after restart", "a", 10, 600, false, 0},
		{"new instance continues", "b", 2, 700, true, 500},
	}
	for _, s := range steps {
		first, ok := tr.admit("h.w", meta(s.inst, s.seq), s.now)
		if ok != s.ok || (ok && first != s.firstSeen) {
			t.Fatalf("%s: admit = %d, %v; want %d, %v", s.name, first, ok, s.firstSeen, s.ok)
		}
	}
	if !tr.latest("h.w", "b", 2) || tr.latest("h.w", "b", 1) || tr.latest("h.w", "a", 9) {
		t.Fatal("latest disagrees with the last admitted beat")
	}
}

func TestTrackerForgetAndReturn(t *testing.T) {
	tr := newTracker()
	tr.admit("k", meta("a", 5), 100)
	tr.forget("k", 200)
	if _, ok := tr.admit("k", meta("a", 5), 300); ok {
		t.Fatal("a replayed goodbye of a departed sender was admitted")
	}
	first, ok := tr.admit("k", meta("a", 6), 400)
	if !ok || first != 400 {
		t.Fatalf("a sender back after expiry: %d %v (a new stay starts at 400)", first, ok)
	}
	tr.forget("k", 500)
	if n := tr.sweep(501); n != 1 || tr.len() != 0 {
		t.Fatalf("sweep dropped %d, %d left", n, tr.len())
	}
}

func TestTrackerObserve(t *testing.T) {
	tr := newTracker()
	// Another queen accepted seq 7 of instance a: this queen refuses 7 and below.
	tr.observe("k", wire.Meta{InstanceID: "a", Seq: 7}, wire.Received{FirstSeenMs: 50})
	if _, ok := tr.admit("k", meta("a", 7), 100); ok {
		t.Fatal("seq accepted elsewhere was admitted again")
	}
	first, ok := tr.admit("k", meta("a", 8), 100)
	if !ok || first != 50 {
		t.Fatalf("admit after observe = %d %v, want first seen 50 from KV", first, ok)
	}
	// A restart seen in KV retires the old instance.
	tr.observe("k", wire.Meta{InstanceID: "b", Seq: 1}, wire.Received{FirstSeenMs: 60})
	if _, ok := tr.admit("k", meta("a", 9), 100); ok {
		t.Fatal("retired instance admitted")
	}
}
