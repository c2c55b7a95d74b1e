package auth

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/token"
)

func newSecret(t *testing.T) token.Secret {
	t.Helper()
	s, err := token.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig(token.Secret{})
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"default", func(*Config) {}, true},
		{"bad prefix", func(c *Config) { c.Prefix = "a.b" }, false},
		{"no account", func(c *Config) { c.Account = "" }, false},
		{"no queue with the callout", func(c *Config) { c.Queue = "" }, false},
		{"no queue without the callout", func(c *Config) { c.Queue, c.Callout = "", false }, true},
		{"no replicas", func(c *Config) { c.Replicas = 0 }, false},
		{"no start timeout", func(c *Config) { c.StartTimeout = 0 }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			if err := c.Validate(); (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
				t.Fatalf("Validate = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestPermissions(t *testing.T) {
	s, _ := subjects.New("fleet")
	for _, tt := range []struct {
		name                     string
		c                        token.Claims
		pubAllow, subAllow, deny []string
	}{
		{"worker", token.Claims{Role: token.RoleWorker, Hive: "h", Worker: "w"},
			[]string{"fleet.hb.worker.h.w"}, nil, []string{">"}},
		{"hive", token.Claims{Role: token.RoleHive, Hive: "h"},
			[]string{"fleet.hb.hive.h"}, []string{"fleet.hb.worker.h.*"}, nil},
		{"viewer", token.Claims{Role: token.RoleViewer, Name: "v"},
			[]string{"$JS.API.STREAM.INFO.KV_fleet_workers", "$JS.API.CONSUMER.CREATE.fleet_events.>"},
			[]string{"fleet.hb.>", "fleet.evt.>", "_INBOX.>"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := Permissions(s, tt.c)
			for _, a := range tt.pubAllow {
				if !slices.Contains(p.Pub.Allow, a) {
					t.Fatalf("publish allow %v lacks %s", p.Pub.Allow, a)
				}
			}
			if !slices.Equal(p.Sub.Allow, jwt.StringList(tt.subAllow)) && tt.subAllow != nil {
				t.Fatalf("subscribe allow %v, want %v", p.Sub.Allow, tt.subAllow)
			}
			if tt.deny != nil && !slices.Equal(p.Sub.Deny, jwt.StringList(tt.deny)) {
				t.Fatalf("subscribe deny %v", p.Sub.Deny)
			}
			for _, a := range p.Pub.Allow {
				// Nobody but a queen writes a bucket, creates, purges or deletes a stream.
				for _, bad := range []string{"$KV.", ".PURGE.", "STREAM.CREATE", "STREAM.UPDATE", "STREAM.DELETE", "$JS.API.INFO"} {
					if strings.Contains(a, bad) {
						t.Fatalf("%s may publish %s", tt.name, a)
					}
				}
			}
		})
	}
}

func TestParseUser(t *testing.T) {
	at := time.UnixMilli(42)
	for _, tt := range []struct {
		c       token.Claims
		subject string
	}{
		{token.Claims{Role: token.RoleHive, Hive: "h", Issued: at}, "hive.h"},
		{token.Claims{Role: token.RoleWorker, Hive: "h", Worker: "w", Issued: at}, "hive.h"},
		{token.Claims{Role: token.RoleViewer, Name: "v", Issued: at}, "viewer.v"},
	} {
		subject, issued, ok := parseUser(userName(tt.c))
		if !ok || subject != tt.subject || issued != 42 || subject != tt.c.Subject() {
			t.Fatalf("%s: %q %d %v", userName(tt.c), subject, issued, ok)
		}
	}
	for _, u := range []string{"rbee-queen", "hive:h", "hive:h@x", "queen:q@1", ""} {
		if _, _, ok := parseUser(u); ok {
			t.Fatalf("parseUser(%q) ok", u)
		}
	}
}

// The configuration block for an operator's nats-server parses as
// nats-server itself reads it, with the issuer and both queen users.
func TestServerConfig(t *testing.T) {
	b, err := Broker(newSecret(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(path, []byte(b.ServerConfig()), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server refuses the block: %v\n%s", err, b.ServerConfig())
	}
	if o.AuthCallout == nil || o.AuthCallout.Issuer != b.Issuer || !slices.Equal(o.AuthCallout.AuthUsers, []string{b.User, b.SysUser}) {
		t.Fatalf("auth_callout %+v", o.AuthCallout)
	}
	if o.SystemAccount != "SYS" {
		t.Fatalf("system account %q", o.SystemAccount)
	}
	again, _ := Broker(token.Secret{})
	if again.Issuer == b.Issuer || again.Password == b.Password {
		t.Fatal("two secrets give the same broker settings")
	}
}

// startService runs a Service (no callout: no broker asks it here) on a
// plain embedded server and returns it with a KV handle on its bucket.
func startService(t *testing.T, secret token.Secret, kick KickFunc) (*Service, jetstream.JetStream) {
	t.Helper()
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	c := DefaultConfig(secret)
	c.Callout, c.Kick, c.Logger = false, kick, testutil.Logger(t)
	s, err := New(nc, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return s, js
}

// Check refuses what the secret did not mint and what a revocation covers;
// a token minted after the revocation passes, and revocations recorded
// before Start are in force when Start returns. Kick is asked exactly about
// the connections a revocation covers.
func TestCheckAndRevoke(t *testing.T) {
	secret := newSecret(t)
	var kicked sync.Map
	kick := func(_ context.Context, match func(string) bool) (int, error) {
		n := 0
		for _, u := range []string{"hive:h1@1000", "worker:h1.w@1000", "hive:h1@5000", "hive:h2@1000", "viewer:v@1000", "rbee-queen"} {
			if match(u) {
				kicked.Store(u, true)
				n++
			}
		}
		return n, nil
	}
	s, js := startService(t, secret, kick)
	old, _ := secret.Hive("h1", time.UnixMilli(1000))
	if _, err := s.Check(old); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Check before Start: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Recorded before Start (no queen ran yet: Revoke makes the bucket).
	if err := Revoke(ctx, js, subjects.DefaultPrefix, "viewer.v", time.UnixMilli(2000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); !errors.Is(err, ErrAlreadyStarted) {
		t.Fatalf("second Start: %v", err)
	}
	v, _ := secret.Viewer("v", time.UnixMilli(1000))
	if _, err := s.Check(v); !errors.Is(err, ErrRevoked) {
		t.Fatalf("viewer revoked before Start: %v", err)
	}
	w, _ := token.Derive(old, "w")
	for _, tok := range []string{old, w} {
		if _, err := s.Check(tok); err != nil {
			t.Fatalf("before the revocation: %v", err)
		}
	}
	if err := Revoke(ctx, js, subjects.DefaultPrefix, "hive.h1", time.UnixMilli(3000)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { _, err := s.Check(old); return errors.Is(err, ErrRevoked) }, "hive h1 revoked")
	if _, err := s.Check(w); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a revoked hive's worker: %v", err)
	}
	later, _ := secret.Hive("h1", time.UnixMilli(5000))
	if c, err := s.Check(later); err != nil || c.Hive != "h1" {
		t.Fatalf("re-enrolled hive: %+v %v", c, err)
	}
	other, _ := secret.Hive("h2", time.UnixMilli(1000))
	if _, err := s.Check(other); err != nil {
		t.Fatalf("another hive: %v", err)
	}
	var got []string
	kicked.Range(func(k, _ any) bool { got = append(got, k.(string)); return true })
	slices.Sort(got)
	if want := []string{"hive:h1@1000", "viewer:v@1000", "worker:h1.w@1000"}; !slices.Equal(got, want) {
		t.Fatalf("kicked %v, want %v", got, want)
	}
	if err := Revoke(ctx, js, subjects.DefaultPrefix, "queen.q", time.Now()); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Revoke of a queen: %v", err)
	}
	st := s.Stats()
	if st.Refused[ReasonRevoked] != 3 || st.Kicked != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// Check races revocations arriving and Stop; Stop is safe twice and before
// Start. Run with -race.
func TestServiceConcurrency(t *testing.T) {
	secret := newSecret(t)
	idle, _ := startService(t, secret, nil)
	idle.Stop()
	idle.Stop()
	s, js := startService(t, secret, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tok, _ := secret.Hive("h", time.UnixMilli(1))
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				_, _ = s.Check(tok)
				_ = s.Stats()
			}
		}()
	}
	for i := range 20 {
		if err := Revoke(ctx, js, subjects.DefaultPrefix, "hive.h"+string(rune('a'+i)), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := Revoke(ctx, js, subjects.DefaultPrefix, "hive.h", time.Now()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { _, err := s.Check(tok); return errors.Is(err, ErrRevoked) }, "revocation seen")
	s.Stop()
	s.Stop()
	stop.Store(true)
	wg.Wait()
}
