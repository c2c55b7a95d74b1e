package token

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func secret(t *testing.T) Secret {
	t.Helper()
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerify(t *testing.T) {
	s, other := secret(t), secret(t)
	at := time.UnixMilli(1_780_000_000_123)
	hive, err := s.Hive("gpu-node-1", at)
	if err != nil {
		t.Fatal(err)
	}
	w, err := Derive(hive, "llama-0")
	if err != nil {
		t.Fatal(err)
	}
	viewer, err := s.Viewer("grafana", at)
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.Hive("gpu-node-1", at)
	foreignWorker, _ := Derive(foreign, "llama-0")
	otherHive, _ := s.Hive("gpu-node-2", at)
	// a hive token edited to name another hive keeps its MAC
	renamed := strings.Replace(hive, ".gpu-node-1.", ".gpu-node-2.", 1)
	// a worker token moved to a sibling keeps its MAC
	sibling := strings.Replace(w, ".llama-0.", ".llama-1.", 1)
	flipped := []byte(hive)
	if flipped[len(flipped)-3] == 'A' {
		flipped[len(flipped)-3] = 'B'
	} else {
		flipped[len(flipped)-3] = 'A'
	}
	later := strings.Replace(hive, ".1780000000123.", ".1780000000124.", 1)
	asWorker, _ := Derive(otherHive, "llama-0")
	tests := []struct {
		name string
		tok  string
		want Claims
		err  error
	}{
		{name: "hive", tok: hive, want: Claims{Role: RoleHive, Hive: "gpu-node-1", Issued: at}},
		{name: "worker derived by its hive", tok: w, want: Claims{Role: RoleWorker, Hive: "gpu-node-1", Worker: "llama-0", Issued: at}},
		{name: "viewer", tok: viewer, want: Claims{Role: RoleViewer, Name: "grafana", Issued: at}},
		{name: "surrounding whitespace (a file's newline)", tok: " " + hive + "\n", want: Claims{Role: RoleHive, Hive: "gpu-node-1", Issued: at}},
		{name: "another queen's secret", tok: foreign, err: ErrForged},
		{name: "worker of another queen's hive", tok: foreignWorker, err: ErrForged},
		{name: "hive renamed", tok: renamed, err: ErrForged},
		{name: "worker renamed to a sibling", tok: sibling, err: ErrForged},
		{name: "MAC bit flipped", tok: string(flipped), err: ErrForged},
		{name: "issue time moved", tok: later, err: ErrForged},
		{name: "another hive's worker claiming this hive", tok: strings.Replace(asWorker, ".gpu-node-2.", ".gpu-node-1.", 1), err: ErrForged},
		{name: "truncated", tok: hive[:len(hive)-5], err: ErrMalformed},
		{name: "MAC's padding bits set (a second spelling)", tok: respell(hive), err: ErrMalformed},
		{name: "MAC missing", tok: hive[:strings.LastIndex(hive, ".")], err: ErrMalformed},
		{name: "empty", tok: "", err: ErrMalformed},
		{name: "other version", tok: "rbee2" + hive[5:], err: ErrMalformed},
		{name: "unknown role", tok: strings.Replace(hive, ".hive.", ".queen.", 1), err: ErrMalformed},
		{name: "invalid ID", tok: strings.Replace(hive, ".gpu-node-1.", ".gpu*node.", 1), err: ErrMalformed},
		{name: "negative time", tok: strings.Replace(hive, ".1780000000123.", ".-1.", 1), err: ErrMalformed},
		{name: "padded time", tok: strings.Replace(hive, ".1780000000123.", ".01780000000123.", 1), err: ErrMalformed},
		{name: "a worker field in a hive token", tok: strings.Replace(hive, ".gpu-node-1.", ".gpu-node-1.x.", 1), err: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Verify(tt.tok)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Verify = %+v, %v; want %v", got, err, tt.err)
				}
				if err != nil && strings.Contains(err.Error(), tt.tok[max(0, len(tt.tok)-10):]) && len(tt.tok) > 10 {
					t.Fatalf("error %q shows the token", err)
				}
				return
			}
			if err != nil || got.Role != tt.want.Role || got.Hive != tt.want.Hive || got.Worker != tt.want.Worker ||
				got.Name != tt.want.Name || !got.Issued.Equal(tt.want.Issued) {
				t.Fatalf("Verify = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestDerive(t *testing.T) {
	s := secret(t)
	v, _ := s.Viewer("grafana", time.Now())
	if _, err := Derive(v, "w"); !errors.Is(err, ErrRole) {
		t.Fatalf("Derive from a viewer token: %v", err)
	}
	h, _ := s.Hive("h", time.Now())
	w, _ := Derive(h, "w")
	if _, err := Derive(w, "w2"); !errors.Is(err, ErrRole) {
		t.Fatalf("Derive from a worker token: %v", err)
	}
	if _, err := Derive(h, "bad.id"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Derive with a bad worker ID: %v", err)
	}
	if a, b := mustDerive(t, h, "w"), mustDerive(t, h, "w"); a != b {
		t.Fatal("Derive is not deterministic")
	}
	if _, err := s.Hive("a.b", time.Now()); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Hive with a bad ID: %v", err)
	}
}

func mustDerive(t *testing.T, h, w string) string {
	t.Helper()
	tok, err := Derive(h, w)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestIdentity(t *testing.T) {
	for _, tt := range []struct {
		c             Claims
		ident, revoke string
	}{
		{Claims{Role: RoleHive, Hive: "h"}, "hive:h", "hive.h"},
		{Claims{Role: RoleWorker, Hive: "h", Worker: "w"}, "worker:h.w", "hive.h"},
		{Claims{Role: RoleViewer, Name: "v"}, "viewer:v", "viewer.v"},
	} {
		if tt.c.Identity() != tt.ident || tt.c.Subject() != tt.revoke {
			t.Fatalf("%+v: %q %q", tt.c, tt.c.Identity(), tt.c.Subject())
		}
	}
}

func TestSecretFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d", SecretFile)
	s, created, err := LoadOrCreateSecret(path)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode: %v %v", fi, err)
	}
	again, created, err := LoadOrCreateSecret(path)
	if err != nil || created || again != s {
		t.Fatalf("reload: created %v, err %v, same %v", created, err, again == s)
	}
	if err := os.WriteFile(path, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateSecret(path); !errors.Is(err, ErrBadSecret) {
		t.Fatalf("damaged secret: %v", err)
	}
	if string(s.Derived("a")) == string(s.Derived("b")) || len(s.Derived("a")) != 32 {
		t.Fatal("Derived keys are not distinct 32-byte keys")
	}
}

// FuzzVerify: no input panics, and nothing but a minted token verifies.
func FuzzVerify(f *testing.F) {
	var s Secret
	h, _ := s.Hive("gpu-node-1", time.UnixMilli(1))
	w, _ := Derive(h, "w")
	v, _ := s.Viewer("v", time.UnixMilli(1))
	for _, seed := range []string{h, w, v, "", "rbee1.hive..1.", "rbee1.worker.a.b.1.x"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := s.Verify(tok)
		if err != nil {
			return
		}
		var again string
		switch c.Role {
		case RoleHive:
			again, _ = s.Hive(c.Hive, c.Issued)
		case RoleViewer:
			again, _ = s.Viewer(c.Name, c.Issued)
		case RoleWorker:
			hive, _ := s.Hive(c.Hive, c.Issued)
			again, _ = Derive(hive, c.Worker)
		}
		if again != strings.TrimSpace(tok) {
			t.Fatalf("%q verified as %+v but mints %q", tok, c, again)
		}
	})
}

// respell returns tok with its MAC's last character's two unused bits set:
// the same bytes to a lax base64 decoder.
func respell(tok string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, tok[len(tok)-1])
	return tok[:len(tok)-1] + string(alphabet[i|3])
}

func BenchmarkVerifyWorker(b *testing.B) {
	var s Secret
	h, _ := s.Hive("gpu-node-1", time.Now())
	w, _ := Derive(h, "llama-0")
	for b.Loop() {
		if _, err := s.Verify(w); err != nil {
			b.Fatal(err)
		}
	}
}

// Verify may be called concurrently. Run with -race.
func TestVerifyConcurrently(t *testing.T) {
	s := secret(t)
	h, _ := s.Hive("h", time.Now())
	w, _ := Derive(h, "w")
	done := make(chan error)
	for range 4 {
		go func() {
			var err error
			for range 200 {
				if _, err = s.Verify(w); err != nil {
					break
				}
			}
			done <- err
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
