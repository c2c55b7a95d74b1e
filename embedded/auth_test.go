package embedded

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

func TestNeedsAuth(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"127.0.0.1", false},
		{"127.0.0.5", false},
		{"::1", false},
		{"[::1]", false},
		{"localhost", false},
		{"LocalHost", false},
		{"", true},
		{"0.0.0.0", true},
		{"::", true},
		{"10.0.0.5", true},
		{"192.168.1.20", true},
		{"fe80::1", true},
		{"queen.example.com", true},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			if got := NeedsAuth(tt.host); got != tt.want {
				t.Fatalf("NeedsAuth(%q) = %v, want %v", tt.host, got, tt.want)
			}
		})
	}
}

// With authorization on (as beyond loopback), the queens' user gets in and
// still sees advisories; a client without it waits for the callout, which
// nobody serves here, and is refused; the server counts the refusal.
func TestCalloutAuthorization(t *testing.T) {
	c := testConfig(t)
	c.Auth = true // what a non-loopback Host turns on by itself; tests stay on loopback
	akp, _ := nkeys.CreateAccount()
	issuer, _ := akp.PublicKey()
	c.Callout = &Callout{Issuer: issuer, User: "rbee-queen", Password: "queen-secret-password"}
	s := startServer(t, c)
	nc, err := nats.Connect(s.ClientURL(), nats.Timeout(10*time.Second))
	if err == nil {
		nc.Close()
		t.Fatal("an anonymous client got in")
	}
	if nc, err := nats.Connect(s.ClientURL(), nats.UserInfo("rbee-queen", "wrong"), nats.Timeout(10*time.Second)); err == nil {
		nc.Close()
		t.Fatal("the queens' user with a wrong password got in")
	}
	checkFor(t, 5*time.Second, func() error {
		if _, a := s.Refusals(); a < 1 {
			return fmt.Errorf("authentication refusals %d", a)
		}
		return nil
	})
	url := strings.Replace(s.ClientURL(), "nats://", "nats://rbee-queen:queen-secret-password@", 1)
	adv := watchAdvisories(t, connect(t, url), Account)
	q := connect(t, url)
	id := ConnID(q)
	checkFor(t, 5*time.Second, func() error { _, err := adv.find(ConnectAdvisoryType, id); return err })
	if n := s.Kick(func(string) bool { return false }); n != 0 {
		t.Fatalf("Kick matching nothing closed %d", n)
	}
	// Kick may be called concurrently: together the calls close both
	// connections (a connection still closing may be counted twice).
	var total atomic.Int64
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			total.Add(int64(s.Kick(func(user string) bool { return user == "rbee-queen" })))
		}()
	}
	wg.Wait()
	if n := total.Load(); n < 2 {
		t.Fatalf("Kick closed %d connections, want the 2 of rbee-queen", n)
	}
	// Both were ended by the server; nats.go reconnects them.
	checkFor(t, 10*time.Second, func() error {
		if q.Stats().Reconnects < 1 || ConnID(q) == id {
			return fmt.Errorf("q reconnects %d, conn %s", q.Stats().Reconnects, ConnID(q))
		}
		return nil
	})
}

// Beyond loopback, or with Auth, a Config without Callout or a
// configuration file is refused.
func TestAuthNeedsCallout(t *testing.T) {
	c := testConfig(t)
	c.Host = "0.0.0.0"
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "callout") {
		t.Fatalf("Validate = %v", err)
	}
	c.Host, c.Auth = "127.0.0.1", true
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Validate with Auth = %v", err)
	}
	c.ConfigFile = writeConf(t, "max_payload: 1MB")
	if err := c.Validate(); err != nil {
		t.Fatalf("with a configuration file: %v", err)
	}
	c.ConfigFile, c.Auth = "", false
	connect(t, startServer(t, c).ClientURL()) // loopback: no credentials
}

// A cluster listening beyond loopback without a configuration file is refused:
// its routes would need authorization every member shares.
func TestClusterBeyondLoopbackNeedsConfig(t *testing.T) {
	c := DefaultConfig(t.TempDir())
	c.Cluster, c.ClusterName = "0.0.0.0:6222", "rbee"
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "beyond loopback") {
		t.Fatalf("Validate = %v", err)
	}
	c.ConfigFile = "/etc/rbee/nats.conf"
	if err := c.Validate(); err != nil {
		t.Fatalf("with a configuration file: %v", err)
	}
	c.ConfigFile, c.Cluster = "", "127.0.0.1:6222"
	if err := c.Validate(); err != nil {
		t.Fatalf("loopback cluster: %v", err)
	}
}
