package embedded

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		f    func(c *Config)
		ok   bool
	}{
		{"default", func(c *Config) {}, true},
		{"no store", func(c *Config) { c.StoreDir = "" }, false},
		{"bad port", func(c *Config) { c.Port = 70000 }, false},
		{"negative limit", func(c *Config) { c.MaxStore = -1 }, false},
		{"no ready timeout", func(c *Config) { c.ReadyTimeout = 0 }, false},
		{"cluster without name", func(c *Config) { c.Cluster = "127.0.0.1:-1" }, false},
		{"routes without cluster", func(c *Config) { c.Routes = []string{"nats-route://127.0.0.1:1"} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig("/tmp/x")
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
}

func TestServerJetStreamKV(t *testing.T) {
	c := DefaultConfig(t.TempDir())
	c.Port = -1
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t", TTL: time.Minute, LimitMarkerTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil || string(e.Value()) != "v" {
		t.Fatalf("Get = %v, %v", e, err)
	}
	s.Shutdown()
	s.Shutdown() // twice is safe
}

func TestConfigFileAndOverrides(t *testing.T) {
	c := DefaultConfig(t.TempDir())
	c.ConfigFile = "does-not-exist.conf"
	if _, err := New(c); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("missing config file: %v", err)
	}
}

func TestPortInUse(t *testing.T) {
	c := DefaultConfig(t.TempDir())
	c.Port = -1
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	c2 := DefaultConfig(t.TempDir())
	c2.Port = s.NATS().Addr().(*net.TCPAddr).Port
	if _, err := New(c2); !errors.Is(err, ErrListen) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second server on a taken port: %v", err)
	}
}

// The ping and write settings reach nats-server; a configuration file's own
// ones win, and routes keep nats-server's write deadline.
func TestPingSettings(t *testing.T) {
	c := DefaultConfig(t.TempDir())
	opts, err := c.Options()
	if err != nil {
		t.Fatal(err)
	}
	if opts.PingInterval != 2*time.Second || opts.MaxPingsOut != 2 || opts.WriteDeadline != 3*time.Second {
		t.Fatalf("defaults: ping %s × %d, write deadline %s", opts.PingInterval, opts.MaxPingsOut, opts.WriteDeadline)
	}
	if opts.Cluster.WriteDeadline != 10*time.Second {
		t.Fatalf("route write deadline %s", opts.Cluster.WriteDeadline)
	}
	c.ConfigFile = writeConf(t, "ping_interval: \"20s\"\nping_max: 5\nwrite_deadline: \"7s\"\n")
	if opts, err = c.Options(); err != nil {
		t.Fatal(err)
	}
	if opts.PingInterval != 20*time.Second || opts.MaxPingsOut != 5 || opts.WriteDeadline != 7*time.Second {
		t.Fatalf("file: ping %s × %d, write deadline %s", opts.PingInterval, opts.MaxPingsOut, opts.WriteDeadline)
	}
	c = DefaultConfig(t.TempDir())
	c.PingInterval = -time.Second
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative ping interval: %v", err)
	}
}
