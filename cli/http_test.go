package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/wire"
)

// httpSystem is a server, a queen on its own connection and the queen's
// HTTP server with its web view.
type httpSystem struct {
	srv  *embedded.Server
	nc   *nats.Conn // the queen's
	q    *queen.Queen
	http *httpServer
}

func (s *httpSystem) url() string { return "http://" + s.http.Addr() }

func startHTTPSystem(t *testing.T) *httpSystem {
	t.Helper()
	return startHTTPSystemOn(t, embeddedOn(t, t.TempDir(), -1))
}

// embeddedOn starts an embedded server storing in dir on port (-1: any).
func embeddedOn(t *testing.T, dir string, port int) *embedded.Server {
	t.Helper()
	c := embedded.DefaultConfig(dir)
	c.Port = port
	srv, err := embedded.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

func startHTTPSystemOn(t *testing.T, srv *embedded.Server) *httpSystem {
	t.Helper()
	nc := testutil.Connect(t, srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	qc := queen.DefaultConfig()
	qc.Logger = testutil.Logger(t) // entries live 3 of their own intervals, rounded up to whole seconds
	fan := &eventFanout{}          // the web view shares the queen's watch, as in rbee queen
	qc.OnEvent, qc.Refreshes = fan.call, true
	q, err := queen.New(nc, qc)
	if err != nil {
		t.Fatal(err)
	}
	// Start's context bounds the queen's whole run: t.Context ends with the test.
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Stop(context.Background()) })
	hs, err := startHTTP(context.Background(), "127.0.0.1:0", q, nc, testutil.Logger(t), fan)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })
	return &httpSystem{srv: srv, nc: nc, q: q, http: hs}
}

// get returns the status and body of GET url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// checkFor polls f until it returns nil, failing with its last error at the
// deadline (testutil.CheckFor).
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, 20*time.Millisecond, f)
}

func startTestHive(t *testing.T, url, id string) {
	t.Helper()
	nc := testutil.Connect(t, url)
	hc := hive.DefaultConfig(id)
	hc.Interval, hc.Jitter, hc.Hostname = 100*time.Millisecond, 0, "host-"+id
	hc.Stats = func(b *wire.Hive) {
		used, total := uint64(30<<30), uint64(80<<30)
		b.GPUs = []wire.GPU{{Index: 0, UUID: "GPU-" + id, Name: "H100", VRAMUsedBytes: &used, VRAMTotalBytes: &total}}
	}
	h, err := hive.New(nc, hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
}

// TestHTTPEntriesAndFilters: single entries by key with 404 and 400, and
// every filter of the lists, repeated values included.
func TestHTTPEntriesAndFilters(t *testing.T) {
	s := startHTTPSystem(t)
	url := s.srv.ClientURL()
	startTestHive(t, url, "h1")
	startTestHive(t, url, "h2")
	beatingWorker(t, url, "h1", "w1", 100*time.Millisecond)
	w2 := beatingWorker(t, url, "h1", "w2", 100*time.Millisecond)
	beatingWorker(t, url, "h2", "w3", 100*time.Millisecond)
	if err := w2.SetStatus(wire.StatusBusy, wire.Healthy, ""); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error {
		code, body := get(t, s.url()+"/v1/workers?status=busy")
		if code != 200 || !strings.Contains(body, `"worker_id": "w2"`) {
			return fmt.Errorf("busy w2 not listed: %d %s", code, body)
		}
		if n, h := s.q.Registry().Sizes(); n != 3 || h != 2 {
			return fmt.Errorf("registry has %d workers, %d hives", n, h)
		}
		return nil
	})

	keys := func(body string) string {
		var es []struct {
			HiveID   string `json:"hive_id"`
			WorkerID string `json:"worker_id"`
		}
		if err := json.Unmarshal([]byte(body), &es); err != nil {
			t.Fatalf("not a JSON list: %v: %s", err, body)
		}
		var ks []string
		for _, e := range es {
			k := e.HiveID
			if e.WorkerID != "" {
				k += "." + e.WorkerID
			}
			ks = append(ks, k)
		}
		return strings.Join(ks, ",")
	}
	tests := []struct {
		name, path string
		code       int
		want       string // keys for a list, a substring otherwise
	}{
		{"all workers", "/v1/workers", 200, "h1.w1,h1.w2,h2.w3"},
		{"by hive", "/v1/workers?hive=h1", 200, "h1.w1,h1.w2"},
		{"by model", "/v1/workers?model=m-w3", 200, "h2.w3"},
		{"by status", "/v1/workers?status=ready", 200, "h1.w1,h2.w3"},
		{"status either", "/v1/workers?status=ready&status=busy", 200, "h1.w1,h1.w2,h2.w3"},
		{"hive and status", "/v1/workers?hive=h1&status=ready", 200, "h1.w1"},
		{"alive without the key", "/v1/workers?liveness=alive", 200, "h1.w1,h1.w2,h2.w3"},
		{"none disconnected", "/v1/workers?liveness=disconnected", 200, ""},
		{"no match", "/v1/workers?hive=h9", 200, ""},
		{"unknown filter", "/v1/workers?colour=red", 400, `unknown filter \"colour\"`},
		{"bad status", "/v1/workers?status=asleep", 400, `status \"asleep\"`},
		{"bad liveness", "/v1/workers?liveness=dead", 400, "want alive, disconnected or stalled"},
		{"one worker", "/v1/workers/h1.w2", 200, `"status": "busy"`},
		{"absent worker", "/v1/workers/h1.w9", 404, `"error":"worker h1.w9 not in the registry"`},
		{"bad worker key", "/v1/workers/h1", 400, "is not <hive_id>.<worker_id>"},
		{"all hives", "/v1/hives", 200, "h1,h2"},
		{"hive filter", "/v1/hives?hive=h2", 200, "h2"},
		{"hive health", "/v1/hives?health=healthy", 200, "h1,h2"},
		{"hive bad health", "/v1/hives?health=fine", 400, `health \"fine\"`},
		{"one hive", "/v1/hives/h1", 200, `"hostname": "host-h1"`},
		{"absent hive", "/v1/hives/h9", 404, `"error":"hive h9 not in the registry"`},
		{"bad hive id", "/v1/hives/a.b", 400, "is not a hive id"},
		{"unknown endpoint", "/v1/queens/x/y", 404, "no such endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(t, s.url()+tt.path)
			if code != tt.code {
				t.Fatalf("GET %s: %d, want %d: %s", tt.path, code, tt.code, body)
			}
			if code == 200 && strings.HasPrefix(body, "[") {
				if got := keys(body); got != tt.want {
					t.Fatalf("GET %s: %q, want %q", tt.path, got, tt.want)
				}
				return
			}
			if !strings.Contains(body, tt.want) {
				t.Fatalf("GET %s: %s lacks %q", tt.path, body, tt.want)
			}
		})
	}
}

// TestHealthzBrokerDown: /healthz answers 200 with the broker up, then 503
// with a one-line reason while the queen's connection is down, then 200
// again once it is back, and 503 once the queen itself has stopped.
func TestHealthzBrokerDown(t *testing.T) {
	dir, port := t.TempDir(), testutil.FreePorts(t, 1)[0]
	s := startHTTPSystemOn(t, embeddedOn(t, dir, port))
	health := func(want int, reason string) func() error {
		return func() error {
			code, body := get(t, s.url()+"/healthz")
			if code != want || !strings.Contains(body, reason) || strings.Count(strings.TrimSpace(body), "\n") != 0 {
				return fmt.Errorf("/healthz = %d %q, want %d with %q on one line", code, body, want, reason)
			}
			return nil
		}
	}
	checkFor(t, 10*time.Second, health(200, `"status":"ok"`))

	s.srv.Shutdown()
	checkFor(t, 10*time.Second, health(503, `"reason":"nats connection reconnecting"`))

	embeddedOn(t, dir, port)
	checkFor(t, 20*time.Second, health(200, `"status":"ok"`))

	// The queen's own judgement counts too.
	s.q.Stop(context.Background())
	checkFor(t, 10*time.Second, health(503, `"reason":"queen not ok: stopped"`))
}

// TestJetStreamHealth: a server without JetStream is reported as such.
func TestJetStreamHealth(t *testing.T) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	if err := jetStreamHealth(context.Background(), js); err == nil || !strings.Contains(err.Error(), "jetstream unavailable") {
		t.Fatalf("jetStreamHealth without JetStream = %v", err)
	}
}

// TestHTTPWebView: the page is served at /, and its stream is open only with
// the queen's connection.
func TestHTTPWebView(t *testing.T) {
	s := startHTTPSystem(t)
	code, body := get(t, s.url()+"/")
	if code != 200 || !strings.Contains(body, "<title>rbee queen</title>") {
		t.Fatalf("GET /: %d %.200s", code, body)
	}
	req, _ := http.NewRequest(http.MethodGet, s.url()+"/v1/events", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 64)
	n, _ := io.ReadAtLeast(resp.Body, line, 20)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || !strings.Contains(string(line[:n]), "retry:") {
		t.Fatalf("GET /v1/events: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), line[:n])
	}

	hs := newHTTPHandler(s.q) // no connection: the page, but no stream
	rec := httptest.NewRecorder()
	hs.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/events", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "broker connection") {
		t.Fatalf("stream without connection: %d %s", rec.Code, rec.Body.String())
	}
}

// TestHTTPErrorsAreJSON: every error the API answers is {"error": "…"} with
// a JSON content type, the mux's own 404 and 405 and the static files' 404
// included; a malformed hive filter is a 400, not an empty list.
func TestHTTPErrorsAreJSON(t *testing.T) {
	s := startHTTPSystem(t)
	c := http.Client{Timeout: 10 * time.Second}
	tests := []struct {
		method, path string
		code         int
		want         string
	}{
		{"GET", "/nope", 404, "no such page: /nope"},
		{"GET", "/v1/nope", 404, "no such endpoint"},
		{"POST", "/v1/workers", 405, "method POST not allowed on /v1/workers (allowed: GET, HEAD)"},
		{"DELETE", "/v1/hives/h1", 405, "not allowed"},
		{"POST", "/healthz", 405, "not allowed"},
		{"GET", "/v1/workers?hive=bad.id", 400, `hive \"bad.id\": not a hive id`},
		{"GET", "/v1/hives?hive=bad.id", 400, `hive \"bad.id\": not a hive id`},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, s.url()+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			var e struct {
				Error string `json:"error"`
			}
			if resp.StatusCode != tt.code || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") ||
				json.Unmarshal(b, &e) != nil || e.Error == "" || !strings.Contains(string(b), tt.want) {
				t.Fatalf("%s %s: %d %s %q, want %d {\"error\":…} with %q", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), b, tt.code, tt.want)
			}
		})
	}
	for _, path := range []string{"/", "/app.js", "/v1/workers?hive=ok-id"} {
		if code, body := get(t, s.url()+path); code != 200 {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
	}
}
