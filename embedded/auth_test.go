package embedded

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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

// With authorization on (as beyond loopback), anonymous clients are refused;
// the generated credentials, kept 0600 in the store directory and the same
// after a restart, let a client in, and that client still sees advisories.
func TestGeneratedCredentials(t *testing.T) {
	c := testConfig(t)
	c.Auth = true // what a non-loopback Host turns on by itself; tests stay on loopback
	s := startServer(t, c)
	creds := s.Credentials()
	if creds == nil || !creds.Generated || creds.User == "" || len(creds.Password) < 24 {
		t.Fatalf("credentials %+v", creds)
	}
	fi, err := os.Stat(creds.File)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file %s: %v, %v", creds.File, fi, err)
	}
	if nc, err := nats.Connect(s.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("an anonymous client got in")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous client: %v, want an authorization violation", err)
	}
	url := creds.URL(s.ClientURL())
	if !strings.Contains(url, creds.Password) {
		t.Fatalf("URL %q lacks the password", url)
	}
	adv := watchAdvisories(t, connect(t, url), Account)
	nc := connect(t, url)
	id := ConnID(nc)
	nc.Close()
	checkFor(t, 5*time.Second, func() error { _, err := adv.find(DisconnectAdvisoryType, id); return err })
	s.Shutdown()

	again := startServer(t, c)
	got := again.Credentials()
	if got == nil || got.Generated || got.Password != creds.Password {
		t.Fatalf("after a restart: %+v, want the stored credentials, not generated", got)
	}
	connect(t, got.URL(again.ClientURL()))
}

// On loopback without Auth, and with a configuration file, the broker
// generates nothing.
func TestNoGeneratedCredentials(t *testing.T) {
	s := startServer(t, testConfig(t))
	if s.Credentials() != nil {
		t.Fatalf("loopback: %+v", s.Credentials())
	}
	c := testConfig(t)
	c.Auth = true
	c.ConfigFile = writeConf(t, "max_payload: 1MB")
	s = startServer(t, c)
	if s.Credentials() != nil {
		t.Fatalf("with a configuration file: %+v", s.Credentials())
	}
	connect(t, s.ClientURL())
}

func TestDamagedCredentials(t *testing.T) {
	c := testConfig(t)
	if err := os.WriteFile(c.StoreDir+"/"+CredentialsFile, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Auth = true
	if _, err := New(c); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged credentials: %v", err)
	}
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
