package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// TestSecureQueenCLI runs the enrolment as docs/security.md writes it, with
// real processes: `rbee queen` listening beyond loopback, `rbee token hive`
// on its machine, a hive and a worker started with the token file alone (the
// worker derives its own), `rbee status` with a viewer token in RBEE_TOKEN,
// the HTTP API over TLS asking for a bearer token (only /healthz open), and
// `rbee token revoke hive`, which ends the hive's and the worker's
// connections. No token appears in any process's output.
func TestSecureQueenCLI(t *testing.T) {
	bin := filepath.Join(rbeeBinary(t), "rbee")
	ports := testutil.FreePorts(t, 2)
	data := t.TempDir()
	certs := newPKI(t, t.TempDir())
	url := fmt.Sprintf("nats://127.0.0.1:%d", ports[0])
	api := fmt.Sprintf("https://127.0.0.1:%d", ports[1])
	qout := start(t, nil, bin, "queen", "--listen", fmt.Sprintf("0.0.0.0:%d", ports[0]), "--data", data,
		"--http", fmt.Sprintf("0.0.0.0:%d", ports[1]), "--http-tls", certs.Cert+","+certs.Key)
	testutil.Eventually(t, 60*time.Second, func() bool { return strings.Contains(qout.text(), "http api ready") },
		"the queen serves its API\n%s", qout)
	if !strings.Contains(qout.text(), "auth callout serving") || !strings.Contains(qout.text(), "rbee token hive") {
		t.Fatalf("the queen beyond loopback neither serves the callout nor says how to enrol:\n%s", qout)
	}

	run := func(env []string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.Output()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		return string(out), err
	}
	hiveTok, err := run(nil, "token", "hive", "gpu-node-1", "--data", data)
	if err != nil {
		t.Fatal(err)
	}
	hiveTok = strings.TrimSpace(hiveTok)
	viewerTok, err := run(nil, "token", "viewer", "ops", "--data", data)
	if err != nil {
		t.Fatal(err)
	}
	viewerTok = strings.TrimSpace(viewerTok)
	tokFile := filepath.Join(t.TempDir(), "gpu-node-1.token")
	if err := os.WriteFile(tokFile, []byte(hiveTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The worker's own token, as `rbee token worker` derives it on the hive.
	wtok, err := run([]string{"RBEE_TOKEN_FILE=" + tokFile}, "token", "worker", "gpu-node-1.llama-0")
	if err != nil || !strings.HasPrefix(wtok, "rbee1.worker.gpu-node-1.llama-0.") {
		t.Fatalf("rbee token worker: %q %v", wtok, err)
	}

	hout := start(t, nil, bin, "hive", "--hive-id", "gpu-node-1", "--nats-url", url, "--token-file", tokFile, "--interval", "2s")
	wout := start(t, nil, bin, "worker", "--hive-id", "gpu-node-1", "--worker-id", "llama-0", "--nats-url", url,
		"--token-file", tokFile, "--interval", "2s")

	status := func(env []string) (int, error) {
		out, err := run(env, "status", "--json", "--nats-url", url)
		if err != nil {
			return 0, err
		}
		var s struct {
			Workers []wire.WorkerEntry `json:"workers"`
			Hives   []wire.HiveEntry   `json:"hives"`
		}
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			return 0, err
		}
		return len(s.Workers) + len(s.Hives), nil
	}
	testutil.Eventually(t, 60*time.Second, func() bool { n, err := status([]string{"RBEE_TOKEN=" + viewerTok}); return err == nil && n == 2 },
		"rbee status with a viewer token shows the hive and the worker\nqueen:\n%s\nhive:\n%s\nworker:\n%s", qout, hout, wout)
	if _, err := status(nil); err == nil {
		t.Fatal("rbee status without a token read the registry")
	}
	// The other readers take the same viewer token.
	if out, err := run([]string{"RBEE_TOKEN=" + viewerTok}, "check", "worker", "gpu-node-1.llama-0", "--nats-url", url); err != nil {
		t.Fatalf("rbee check with a viewer token: %v %s", err, out)
	}
	testutil.Eventually(t, 30*time.Second, func() bool {
		out, err := run([]string{"RBEE_TOKEN=" + viewerTok}, "events", "--since", "1h", "--json", "--nats-url", url)
		return err == nil && strings.Contains(out, "gpu-node-1")
	}, "rbee events with a viewer token replays the history")

	// The HTTP API over TLS: /healthz open, the rest needs a viewer token.
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(certs.CA)
	pool.AppendCertsFromPEM(ca)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(path, tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, api+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tt := range []struct {
		path, tok string
		code      int
	}{
		{"/healthz", "", http.StatusOK},
		{"/v1/workers", "", http.StatusUnauthorized},
		{"/v1/workers", " ", http.StatusUnauthorized},
		{"/metrics", "", http.StatusUnauthorized},
		{"/", "", http.StatusUnauthorized},
		{"/v1/workers", viewerTok[:len(viewerTok)-3], http.StatusUnauthorized},
		{"/v1/workers", hiveTok, http.StatusForbidden},
		{"/v1/workers", viewerTok, http.StatusOK},
	} {
		code, body := get(tt.path, tt.tok)
		if code != tt.code {
			t.Fatalf("GET %s (token %v): %d %s, want %d", tt.path, tt.tok != "", code, body, tt.code)
		}
		if tt.path == "/v1/workers" && code == http.StatusOK && !strings.Contains(body, "llama-0") {
			t.Fatalf("GET /v1/workers: %s", body)
		}
	}
	// Plain HTTP gets Go's "HTTP request to an HTTPS server" 400.
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(strings.Replace(api, "https", "http", 1) + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP with --http-tls: %s", resp.Status)
		}
	}

	// Revocation: the hive's and the worker's connections end, they stay out.
	if out, err := run(nil, "token", "revoke", "hive", "gpu-node-1", "--data", data, "--nats-url", url); err != nil {
		t.Fatalf("rbee token revoke: %v %s", err, out)
	}
	testutil.Eventually(t, 30*time.Second, func() bool {
		_, m := get("/metrics", viewerTok)
		return strings.Contains(m, "rbee_auth_kicked_total 2") && strings.Contains(m, `rbee_auth_refused_total{reason="revoked"}`) &&
			!strings.Contains(m, `rbee_auth_refused_total{reason="revoked"} 0`)
	}, "the queen ends the revoked hive's and worker's connections and refuses their reconnects\nqueen:\n%s\nhive:\n%s", qout, hout)
	for name, out := range map[string]*lines{"queen": qout, "hive": hout, "worker": wout} {
		for _, tok := range []string{hiveTok, viewerTok, strings.TrimSpace(wtok)} {
			if strings.Contains(out.text(), tok[len(tok)-43:]) {
				t.Fatalf("%s's output holds a token:\n%s", name, out)
			}
		}
	}
	_, m := get("/metrics", viewerTok)
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, "rbee_auth_") || strings.HasPrefix(l, "rbee_broker_") {
			t.Log(l)
		}
	}
}
