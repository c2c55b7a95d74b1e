package cli

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/auth"
	"github.com/rbee/heartbeat/token"
)

// rbee token mints under the secret in --data, derives a worker's token from
// the hive's alone, prints the broker block, and refuses bad invocations
// with exit 2 and without echoing a token.
func TestTokenCommand(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	if code, _, stderr := run(t, ctx, "", "token", "hive", "h1", "--data", data); code != 2 || !strings.Contains(stderr, "no queen secret") {
		t.Fatalf("without a secret: %d %q", code, stderr)
	}
	secret, _, err := token.LoadOrCreateSecret(filepath.Join(data, token.SecretFile))
	if err != nil {
		t.Fatal(err)
	}
	code, hiveTok, stderr := run(t, ctx, "", "token", "hive", "h1", "--data", data)
	if code != 0 {
		t.Fatalf("token hive: %d %s", code, stderr)
	}
	hiveTok = strings.TrimSpace(hiveTok)
	if c, err := secret.Verify(hiveTok); err != nil || c.Role != token.RoleHive || c.Hive != "h1" {
		t.Fatalf("minted %+v %v", c, err)
	}
	if strings.Contains(stderr, hiveTok) {
		t.Fatal("the token went to stderr too")
	}
	code, viewerTok, _ := run(t, ctx, "", "token", "viewer", "ops", "--data", data)
	if c, err := secret.Verify(strings.TrimSpace(viewerTok)); code != 0 || err != nil || c.Role != token.RoleViewer {
		t.Fatalf("viewer: %d %+v %v", code, c, err)
	}
	file := filepath.Join(t.TempDir(), "h1.token")
	if err := os.WriteFile(file, []byte(hiveTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, wTok, stderr := run(t, ctx, "", "token", "worker", "h1.w1", "--token-file", file)
	if c, err := secret.Verify(strings.TrimSpace(wTok)); code != 0 || err != nil || c.Worker != "w1" || c.Hive != "h1" {
		t.Fatalf("worker: %d %q %+v %v", code, stderr, c, err)
	}
	code, conf, _ := run(t, ctx, "", "token", "server-config", "--data", data)
	b, _ := auth.Broker(secret)
	if code != 0 || !strings.Contains(conf, b.Issuer) || !strings.Contains(conf, "auth_callout") {
		t.Fatalf("server-config: %d %s", code, conf)
	}
	bad := filepath.Join(t.TempDir(), "bad.token")
	if err := os.WriteFile(bad, []byte("rbee1.hive.h1.1.secretlooking"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no subcommand", []string{"token"}, "want hive ID"},
		{"unknown", []string{"token", "queen", "q"}, "unknown token command"},
		{"no ID", []string{"token", "hive", "--data", data}, "want an ID"},
		{"bad ID", []string{"token", "hive", "a.b", "--data", data}, "hive ID"},
		{"revoke what", []string{"token", "revoke", "worker", "h1.w1"}, "revoke hive ID"},
		{"worker without a hive token", []string{"token", "worker", "h1.w1"}, "needs the hive's token"},
		{"worker of another hive", []string{"token", "worker", "h2.w1", "--token-file", file}, "not --hive-id h2"},
		{"worker bad key", []string{"token", "worker", "h1", "--token-file", file}, "want HIVE.WORKER"},
		{"a malformed token file", []string{"token", "worker", "h1.w1", "--token-file", bad}, "is not one"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, ctx, "", tt.args...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.want)
			}
			if strings.Contains(stderr, "secretlooking") || strings.Contains(stderr, hiveTok[len(hiveTok)-20:]) {
				t.Fatalf("stderr shows a token: %q", stderr)
			}
		})
	}
}

// The worker derives its own token from a hive's; a worker or viewer token
// is used as it is; a hive token of another hive is refused.
func TestWorkerToken(t *testing.T) {
	var s token.Secret
	h, _ := s.Hive("h1", time.Now())
	w, err := workerToken(h, "h1", "w1")
	if c, verr := s.Verify(w); err != nil || verr != nil || c.Role != token.RoleWorker || c.Worker != "w1" {
		t.Fatalf("derived %+v %v %v", c, err, verr)
	}
	if same, err := workerToken(w, "h1", "w1"); err != nil || same != w {
		t.Fatalf("a worker token: %v", err)
	}
	if _, err := workerToken(h, "h2", "w1"); err == nil {
		t.Fatal("another hive's token derived a worker token")
	}
	for _, tt := range []struct {
		tok, hive, worker string
		ok                bool
	}{
		{h, "h1", "", true}, {h, "h2", "", false},
		{w, "h1", "w1", true}, {w, "h1", "w2", false}, {w, "h2", "w1", false}, {w, "h1", "", false},
		{"", "h1", "", true},
	} {
		if err := checkTokenFor(tt.tok, tt.hive, tt.worker); (err == nil) != tt.ok {
			t.Fatalf("checkTokenFor(%s, %s.%s) = %v, want ok %v", tt.tok[:min(len(tt.tok), 12)], tt.hive, tt.worker, err, tt.ok)
		}
	}
}

// The HTTP guard: /healthz open, everything else needs a viewer's bearer
// token; refusals are 401 (none, bad, revoked) or 403 (another role), JSON.
func TestHTTPGuard(t *testing.T) {
	var s token.Secret
	viewer, _ := s.Viewer("ops", time.Now())
	hive, _ := s.Hive("h1", time.Now())
	revoked, _ := s.Viewer("gone", time.Now())
	check := func(tok string) (token.Claims, error) {
		if tok == revoked {
			return token.Claims{}, auth.ErrRevoked
		}
		return s.Verify(tok)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := httpSecurity{check: check}.wrap(ok)
	for _, tt := range []struct {
		path, auth string
		code       int
		body       string
	}{
		{"/healthz", "", http.StatusTeapot, ""},
		{"/v1/workers", "", http.StatusUnauthorized, "bearer token is required"},
		{"/v1/workers", "Basic abc", http.StatusUnauthorized, "bearer token is required"},
		{"/v1/workers", "Bearer " + viewer[:len(viewer)-2], http.StatusUnauthorized, "token refused"},
		{"/v1/workers", "Bearer " + revoked, http.StatusUnauthorized, "token revoked"},
		{"/metrics", "Bearer " + hive, http.StatusForbidden, "viewer token"},
		{"/metrics", "Bearer " + viewer, http.StatusTeapot, ""},
		{"/", "Bearer " + viewer, http.StatusTeapot, ""},
	} {
		r := httptest.NewRequest(http.MethodGet, tt.path, nil)
		if tt.auth != "" {
			r.Header.Set("Authorization", tt.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.code || !strings.Contains(w.Body.String(), tt.body) {
			t.Fatalf("%s %q: %d %s", tt.path, tt.auth, w.Code, w.Body)
		}
		if w.Code == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
			t.Fatalf("401 without WWW-Authenticate")
		}
	}
	// Without a check the API is open (loopback).
	w := httptest.NewRecorder()
	httpSecurity{}.wrap(ok).ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/workers", nil))
	if w.Code != http.StatusTeapot {
		t.Fatalf("loopback API: %d", w.Code)
	}
	if _, _, err := parseTLSPair("only-one"); err == nil {
		t.Fatal("--http-tls with one file accepted")
	}
	if _, _, err := parseTLSPair("/nonexistent/c.pem,/nonexistent/k.pem"); err == nil {
		t.Fatal("--http-tls with missing files accepted")
	}
	var ue usageError
	if _, _, err := parseTLSPair("a,b"); !errors.As(err, &ue) {
		t.Fatalf("--http-tls error is no usage error: %v", err)
	}
}
