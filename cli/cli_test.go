package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

func run(t *testing.T, ctx context.Context, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	// Synchronised: a connection's asynchronous error callbacks may still log
	// to stderr while Main writes its last line.
	var out, errb testutil.Buffer
	code = Main(ctx, args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestBadInvocations(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, ""},
		{"unknown command", []string{"dance"}, "unknown command"},
		{"bad hive id", []string{"hive", "--hive-id", "a.b"}, "invalid id"},
		{"missing hive id", []string{"hive"}, "is empty"},
		{"bad worker id", []string{"worker", "--hive-id", "h", "--worker-id", "w*"}, "invalid id"},
		{"bad flag", []string{"queen", "--nope"}, "flag provided but not defined"},
		{"bad missed", []string{"queen", "--missed", "1"}, "missed beats 1 outside"},
		{"gone ttl flag", []string{"queen", "--worker-ttl", "10s"}, "flag provided but not defined: -worker-ttl"},
		{"bad prefix", []string{"status", "--prefix", "a.b"}, "invalid prefix"},
		{"bad log level", []string{"status", "--log-level", "loud"}, "--log-level"},
		{"routes without cluster", []string{"queen", "--routes", "nats-route://127.0.0.1:1", "--http", "off", "--data", "/tmp/x"}, "--routes needs --cluster"},
		{"bad pprof", []string{"queen", "--pprof", "6060", "--http", "off", "--data", "/tmp/x"}, "--pprof"},
		{"bad simulate", []string{"worker", "--hive-id", "h", "--worker-id", "w", "--simulate", "-1"}, "--simulate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, context.Background(), "", tt.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr %q lacks %q", stderr, tt.want)
			}
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); tt.want != "" && !strings.HasPrefix(stderr, "Usage") && n > 0 && !strings.Contains(tt.want, "flag") {
				t.Fatalf("reason is not one line: %q", stderr)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	w := wire.Worker{HiveID: "h1", WorkerID: "w1", Status: wire.StatusReady, Meta: wire.Meta{Health: wire.Healthy}}
	w.Stamp("i", 3, 5, 1000)
	b, _ := wire.Marshal(&w)
	code, out, stderr := run(t, context.Background(), string(b), "decode")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("not JSON: %q", out)
	}
	if m["worker_id"] != "w1" || m["seq"] != float64(3) || m["status"] != "ready" {
		t.Fatalf("decoded %v", m)
	}
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("want one line, got %q", out)
	}
	code, _, stderr = run(t, context.Background(), "not msgpack at all", "decode")
	if code != 1 || !strings.Contains(stderr, "not msgpack") {
		t.Fatalf("garbage: exit %d stderr %q", code, stderr)
	}
}

// system starts a broker and a queen with a short TTL, and returns the URL.
func system(t *testing.T, ttl time.Duration) (string, *queen.Queen) {
	t.Helper()
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	qc := queen.DefaultConfig()
	q, err := queen.New(nc, qc)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Stop(context.Background()) })
	return srv.ClientURL(), q
}

func beatingWorker(t *testing.T, url, hive, id string, interval time.Duration) *worker.Worker {
	t.Helper()
	nc := testutil.Connect(t, url, nats.ReconnectBufSize(-1))
	c := worker.DefaultConfig(hive, id)
	c.Interval, c.ModelID, c.Device, c.SlotsTotal = interval, "m-"+id, "cuda:0", 2
	w, err := worker.New(nc, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	_ = w.SetStatus(wire.StatusReady, wire.Healthy, "")
	return w
}

func TestStatus(t *testing.T) {
	url, q := system(t, 5*time.Second)
	beatingWorker(t, url, "h1", "w1", 200*time.Millisecond)
	beatingWorker(t, url, "h1", "w2", 200*time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() bool { n, _ := q.Registry().Sizes(); return n == 2 }, "two workers")

	code, out, stderr := run(t, context.Background(), "", "status", "--nats-url", url, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got struct {
		Workers []wire.WorkerEntry `json:"workers"`
		Hives   []wire.HiveEntry   `json:"hives"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(got.Workers) != 2 || got.Workers[0].WorkerID != "w1" || got.Workers[1].ModelID != "m-w2" || got.Workers[0].ReceivedAtMs == 0 {
		t.Fatalf("status --json workers %+v", got.Workers)
	}

	code, out, stderr = run(t, context.Background(), "", "status", "--nats-url", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"WORKERS (2)", "HIVES (0)", "w1", "w2", "h1", "ready", "m-w1", "cuda:0", "0/2"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status table lacks %q:\n%s", want, out)
		}
	}
}

func TestStatusWithoutQueen(t *testing.T) {
	srv := testutil.Server(t)
	code, _, stderr := run(t, context.Background(), "", "status", "--nats-url", srv.ClientURL())
	if code != 1 || !strings.Contains(stderr, "is a queen running") {
		t.Fatalf("exit %d stderr %q", code, stderr)
	}
}

func TestWatch(t *testing.T) {
	url, _ := system(t, time.Second)
	var out, errOut testutil.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- Main(ctx, []string{"watch", "--nats-url", url, "--json"}, strings.NewReader(""), &out, &errOut)
	}()
	defer func() { cancel(); <-done }()
	testutil.Eventually(t, 5*time.Second, func() bool { return strings.Contains(errOut.String(), "watching") }, "watch banner")

	w := beatingWorker(t, url, "h1", "w1", 100*time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() bool { return strings.Contains(out.String(), `"event":"joined"`) }, "joined line")
	_ = w.SetStatus(wire.StatusBusy, wire.Healthy, "")
	testutil.Eventually(t, 5*time.Second, func() bool { return strings.Contains(out.String(), `"event":"updated"`) }, "updated line")
	if err := w.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return strings.Contains(out.String(), `"event":"left"`) }, "left line")
	w2 := beatingWorker(t, url, "h1", "w2", 100*time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() bool { return strings.Count(out.String(), `"event":"joined"`) == 2 }, "second joined")
	w2.Abandon()
	testutil.Eventually(t, 5*time.Second, func() bool { return strings.Contains(out.String(), `"event":"expired"`) }, "expired line")

	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("watch line is not JSON: %q", line)
		}
		if ev["kind"] != "worker" || ev["at"] == nil || ev["key"] == nil {
			t.Fatalf("watch event lacks fields: %v", ev)
		}
	}
}

func TestHTTPAndMetrics(t *testing.T) {
	url, q := system(t, 5*time.Second)
	beatingWorker(t, url, "h1", "w1", 100*time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() bool { n, _ := q.Registry().Sizes(); return n == 1 }, "one worker")
	nc := testutil.Connect(t, url)
	msg := &nats.Msg{Subject: "rbee.hb.worker.h1.w9", Data: []byte("garbage"), Header: nats.Header{}}
	msg.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
	msg.Header.Set(wire.HeaderSchema, wire.SchemaWorker)
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return q.Stats().Rejected["undecodable"] == 1 }, "rejection counted")

	srv := httptest.NewServer(newHTTPHandler(q))
	defer srv.Close()
	get := func(path string) string {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	var workers []wire.WorkerEntry
	if err := json.Unmarshal([]byte(get("/v1/workers")), &workers); err != nil || len(workers) != 1 || workers[0].WorkerID != "w1" {
		t.Fatalf("/v1/workers = %+v, %v", workers, err)
	}
	if !strings.Contains(get("/healthz"), "ok") {
		t.Fatal("healthz")
	}
	metric := func(name string, labels map[string]string) float64 {
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(get("/metrics")))
		if err != nil {
			t.Fatalf("parse /metrics: %v", err)
		}
		f := fams[name]
		if f == nil {
			t.Fatalf("no metric %s", name)
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
		t.Fatalf("no %s with %v", name, labels)
		return 0
	}
	before := metric("rbee_queen_beats_accepted_total", map[string]string{"kind": "worker"})
	testutil.Eventually(t, 5*time.Second, func() bool {
		return metric("rbee_queen_beats_accepted_total", map[string]string{"kind": "worker"}) > before
	}, "accepted counter moves")
	if v := metric("rbee_queen_beats_rejected_total", map[string]string{"kind": "worker", "reason": "undecodable"}); v != 1 {
		t.Fatalf("rejected{undecodable} = %v", v)
	}
	if v := metric("rbee_registry_entries", map[string]string{"kind": "worker"}); v != 1 {
		t.Fatalf("registry entries = %v", v)
	}
	if v := metric("rbee_registry_events_total", map[string]string{"kind": "worker", "event": "joined"}); v != 1 {
		t.Fatalf("joined events = %v", v)
	}
}

// startBeforeBroker runs rbee with args against url, where no server
// listens yet, and returns once it says it is waiting for one; done receives
// its exit code.
func startBeforeBroker(t *testing.T, ctx context.Context, args ...string) (errOut *testutil.Buffer, done <-chan int) {
	t.Helper()
	errOut = &testutil.Buffer{}
	exit := make(chan int, 1)
	go func() { exit <- Main(ctx, args, strings.NewReader(""), io.Discard, errOut) }()
	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(errOut.String(), "no NATS server answers yet")
	}, "rbee %s does not say it is waiting for the broker: %s", args[0], errOut)
	return errOut, exit
}

// TestWorkerWaitsForBroker starts a worker before any server listens on its
// URL: it says it is waiting, connects when the broker comes up, and beats.
func TestWorkerWaitsForBroker(t *testing.T) {
	port := testutil.FreePorts(t, 1)[0]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errOut, done := startBeforeBroker(t, ctx, "worker", "--nats-url", fmt.Sprintf("nats://127.0.0.1:%d", port),
		"--hive-id", "h1", "--worker-id", "early", "--interval", "200ms")

	c := embedded.DefaultConfig(t.TempDir())
	c.Port = port
	srv, err := embedded.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc := testutil.Connect(t, srv.ClientURL())
	beats, err := nc.SubscribeSync("rbee.hb.worker.h1.early")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := beats.NextMsg(10 * time.Second); err != nil {
		t.Fatalf("no beat after the broker came up: %v\n%s", err, errOut)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

// TestStopWhileWaitingForBroker stops a hive that never reached a server: it
// exits cleanly.
func TestStopWhileWaitingForBroker(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errOut, done := startBeforeBroker(t, ctx, "hive", "--nats-url",
		fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePorts(t, 1)[0]), "--hive-id", "h1")
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}
