package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/agenttest"
	"github.com/rbee/heartbeat/internal/enginetest"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// TestWorkerFlagsCheckedBeforeConnecting runs rbee worker against a URL
// where no server listens: every bad flag must end it at once with exit 2,
// not leave it waiting for a broker.
func TestWorkerFlagsCheckedBeforeConnecting(t *testing.T) {
	nowhere := fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePorts(t, 1)[0])
	base := []string{"worker", "--nats-url", nowhere, "--hive-id", "h1", "--worker-id", "w1"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"interval too short", []string{"--interval", "5ms"}, "--interval 5ms: want 10ms to 3600000ms"},
		{"interval too long", []string{"--interval", "2h"}, "want 10ms to 3600000ms"},
		{"unknown engine", []string{"--engine", "triton", "--engine-url", "http://127.0.0.1:1"}, `--engine "triton": want one of vllm, llamacpp, tgi, sglang, generic`},
		{"engine without url", []string{"--engine", "vllm"}, "--engine vllm needs --engine-url"},
		{"engine url without engine", []string{"--engine-url", "http://127.0.0.1:1"}, "need --engine"},
		{"bad engine url", []string{"--engine", "vllm", "--engine-url", "127.0.0.1:8000"}, "engine url"},
		{"probe timeout past its interval", []string{"--engine", "tgi", "--engine-url", "http://127.0.0.1:1", "--engine-interval", "1s", "--engine-timeout", "2s"}, "probe timeout 2s"},
		{"generic names on a preset", []string{"--engine", "vllm", "--engine-url", "http://127.0.0.1:1", "--engine-running", "x"}, "for --engine generic"},
		{"hang without simulate", []string{"--simulate-hang", "1"}, "--simulate-hang 1: want 0 to --simulate (0)"},
		{"hang past simulate", []string{"--simulate", "2", "--simulate-hang", "3"}, "--simulate-hang 3"},
		{"simulate with engine", []string{"--simulate", "2", "--engine", "vllm", "--engine-url", "http://127.0.0.1:1"}, "--simulate runs simulated workers"},
		{"pid with command", []string{"--pid", "7", "--", "true"}, "--pid and a supervised command"},
		{"negative stop grace", []string{"--stop-grace", "-1s", "--", "true"}, "--stop-grace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, context.Background(), "", append(append([]string{}, base...), tt.args...)...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 naming %q", code, stderr, tt.want)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Fatalf("reason is not one line: %q", stderr)
			}
		})
	}
}

// TestWorkerNotAllowedOnItsSubjectIsFatal gives the worker credentials that
// may not publish on its own subject: it must exit non-zero naming the
// subject and the reason, not log "workers beating" and fail every beat.
func TestWorkerNotAllowedOnItsSubjectIsFatal(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, Users: []*server.User{{
		Username: "worker", Password: "secret",
		Permissions: &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{"rbee.hb.worker.h1.other"}}},
	}}}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(5 * time.Second) {
		t.Fatal("server not ready")
	}
	url := "nats://worker:secret@" + srv.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, _, stderr := run(t, ctx, "", "worker", "--nats-url", url, "--hive-id", "h1", "--worker-id", "w1", "--interval", "100ms")
	if code == 0 || ctx.Err() != nil {
		t.Fatalf("exit %d (ctx %v), want a non-zero exit at start; stderr %q", code, ctx.Err(), stderr)
	}
	if !strings.Contains(stderr, "rbee.hb.worker.h1.w1") || !strings.Contains(strings.ToLower(stderr), "permissions violation") {
		t.Fatalf("stderr %q does not name the subject and the reason", stderr)
	}
	if strings.Contains(stderr, "workers beating") {
		t.Fatalf("claimed to be beating: %q", stderr)
	}
}

// TestHiveNotAllowedOnItsSubjectIsFatal is the same for rbee hive.
func TestHiveNotAllowedOnItsSubjectIsFatal(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, Users: []*server.User{{
		Username: "hive", Password: "secret",
		Permissions: &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{"rbee.hb.hive.other"}}},
	}}}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(5 * time.Second) {
		t.Fatal("server not ready")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, _, stderr := run(t, ctx, "", "hive", "--nats-url", "nats://hive:secret@"+srv.Addr().String(), "--hive-id", "h1", "--interval", "100ms")
	if code == 0 || ctx.Err() != nil || !strings.Contains(stderr, "rbee.hb.hive.h1") || strings.Contains(stderr, "hive beating") {
		t.Fatalf("exit %d (ctx %v), stderr %q: want a non-zero exit at start naming rbee.hb.hive.h1", code, ctx.Err(), stderr)
	}
}

// supervised runs rbee worker with a command in the background and returns
// its output and a channel with its result.
type supervised struct {
	stdout, stderr *testutil.Buffer
	done           chan error
	cancel         context.CancelFunc
}

func startSupervised(t *testing.T, url string, extra []string, script string) *supervised {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &supervised{stdout: &testutil.Buffer{}, stderr: &testutil.Buffer{}, done: make(chan error, 1), cancel: cancel}
	args := append([]string{"--nats-url", url, "--hive-id", "h1", "--worker-id", "w1", "--interval", "200ms"}, extra...)
	args = append(args, "--", "sh", "-c", script)
	go func() {
		s.done <- runWorker(&env{ctx: ctx, stdin: strings.NewReader(""), stdout: s.stdout, stderr: s.stderr}, args)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			t.Error("rbee worker did not end")
		}
	})
	return s
}

func (s *supervised) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("rbee worker did not end; stderr:\n%s", s.stderr)
	}
	return nil
}

func (s *supervised) waitFor(t *testing.T, b *testutil.Buffer, text string) {
	t.Helper()
	agenttest.CheckFor(t, 10*time.Second, func() error {
		if !strings.Contains(b.String(), text) {
			return fmt.Errorf("no %q yet; stdout %q; stderr:\n%s", text, s.stdout, s.stderr)
		}
		return nil
	})
}

func exitCodeOf(err error) int {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

// ops records the operations on one registry key.
type ops struct {
	mu  sync.Mutex
	all []string
}

func watchOps(t *testing.T, kv jetstream.KeyValue, key string) *ops {
	t.Helper()
	o := &ops{}
	w, err := kv.Watch(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	// Let the watcher deliver what the key holds now (its nil marker) before
	// anything beats: updates that come while it starts may be folded into
	// its initial value.
	for initial := true; initial; { // the current value, if any, then the nil marker
		select {
		case e := <-w.Updates():
			initial = e != nil
		case <-time.After(10 * time.Second):
			t.Fatal("watcher gave no initial marker")
		}
	}
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			op := "del"
			if e.Operation() == jetstream.KeyValuePut {
				v, err := wire.DecodeWorkerEntry(e.Value())
				op = "put:undecodable"
				if err == nil {
					op = fmt.Sprintf("put:%s/%s:%s", v.Status, v.Health, v.HealthReason)
				}
			}
			o.mu.Lock()
			o.all = append(o.all, op)
			o.mu.Unlock()
		}
	}()
	return o
}

func (o *ops) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.all...)
}

// endsWith polls until the key's last operations are want.
func (o *ops) endsWith(t *testing.T, want ...string) {
	t.Helper()
	agenttest.CheckFor(t, 10*time.Second, func() error {
		l := o.list()
		if len(l) >= len(want) && strings.Join(l[len(l)-len(want):], " | ") == strings.Join(want, " | ") {
			return nil
		}
		return fmt.Errorf("registry operations %q, want them to end with %q", l, want)
	})
}

func TestSuperviseChildExitsZero(t *testing.T) {
	sys := agenttest.Start(t)
	o := watchOps(t, sys.Workers, "h1.w1")
	s := startSupervised(t, sys.URL, nil, "echo hello from the engine")
	if err := s.result(t); err != nil {
		t.Fatalf("result %v, want nil for exit 0; stderr:\n%s", err, s.stderr)
	}
	if !strings.Contains(s.stdout.String(), "hello from the engine") {
		t.Fatalf("engine output not passed through: %q", s.stdout)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.stderr.String())
		}
	})
	o.endsWith(t, "put:stopped/unhealthy:engine exited with code 0", "del")
	s.waitFor(t, s.stderr, "goodbye sent")
}

func TestSuperviseChildKilledFromOutside(t *testing.T) {
	sys := agenttest.Start(t)
	o := watchOps(t, sys.Workers, "h1.w1")
	s := startSupervised(t, sys.URL, nil, "echo engine-pid=$$; exec sleep 60")
	s.waitFor(t, s.stdout, "engine-pid=")
	m := regexp.MustCompile(`engine-pid=(\d+)`).FindStringSubmatch(s.stdout.String())
	pid, _ := strconv.Atoi(m[1])
	agenttest.CheckFor(t, 10*time.Second, func() error {
		e, err := sys.Worker("h1.w1")
		if err != nil || e.Status != wire.StatusReady {
			return fmt.Errorf("want the worker ready in the registry: %s %v", agenttest.Describe(e), err)
		}
		if e.PID != pid {
			return fmt.Errorf("registry pid %d, child pid %d", e.PID, pid)
		}
		return nil
	})
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	o.endsWith(t, "put:stopped/unhealthy:engine killed by signal killed", "del")
	if code := exitCodeOf(s.result(t)); code != 137 {
		t.Fatalf("exit code %d, want 137 (128 + SIGKILL)", code)
	}
}

func TestSuperviseSigtermReachesChild(t *testing.T) {
	sys := agenttest.Start(t)
	o := watchOps(t, sys.Workers, "h1.w1")
	s := startSupervised(t, sys.URL, nil, `trap 'echo engine got TERM; exit 7' TERM; echo engine up; while :; do sleep 0.05; done`)
	s.waitFor(t, s.stdout, "engine up")
	s.waitFor(t, s.stderr, "workers beating")
	// The real signal, as a service manager sends it: runWorker listens for
	// it while it supervises, so the test process is not stopped by it. In
	// rbee the same signal also ends the context main gave (cancel).
	s.cancel()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := s.result(t)
	if code := exitCodeOf(err); code != 7 {
		t.Fatalf("result %v (code %d), want the child's code 7; stderr:\n%s", err, code, s.stderr)
	}
	s.waitFor(t, s.stdout, "engine got TERM")
	s.waitFor(t, s.stderr, "goodbye sent")
	// The engine exited non-zero on the way out: the last state before the
	// goodbye says so, not healthy.
	o.endsWith(t, "put:stopped/unhealthy:engine exited with code 7", "del")
}

func TestSuperviseChildIgnoringTermIsKilled(t *testing.T) {
	sys := agenttest.Start(t)
	s := startSupervised(t, sys.URL, []string{"--stop-grace", "200ms"}, `trap '' TERM; echo engine up; while :; do sleep 0.05; done`)
	s.waitFor(t, s.stdout, "engine up")
	s.waitFor(t, s.stderr, "workers beating")
	s.cancel() // what SIGTERM does through main's signal context
	err := s.result(t)
	if code := exitCodeOf(err); code != 137 || !strings.Contains(err.Error(), "after ignoring the stop signal") {
		t.Fatalf("result %v (code %d), want killed after the grace", err, code)
	}
	s.waitFor(t, s.stderr, "goodbye sent")
	agenttest.CheckFor(t, 10*time.Second, func() error {
		if _, err := sys.Worker("h1.w1"); !errors.Is(err, agenttest.ErrAbsent) {
			return fmt.Errorf("want the entry gone, got %v", err)
		}
		return nil
	})
}

// TestWorkerWithEngineAndSupervision combines both: the engine is the child
// and is probed; its answers reach the registry.
func TestWorkerWithEngineAndSupervision(t *testing.T) {
	sys := agenttest.Start(t)
	fake := enginetest.Start(t, "llamacpp")
	fake.SetLoading(true)
	s := startSupervised(t, sys.URL, []string{"--engine", "llamacpp", "--engine-url", fake.URL, "--engine-interval", "100ms", "--slots", "4"},
		`echo engine up; while :; do sleep 0.05; done`)
	check := func(what string, ok func(e *wire.WorkerEntry) bool) {
		t.Helper()
		agenttest.CheckFor(t, 10*time.Second, func() error {
			e, err := sys.Worker("h1.w1")
			if err != nil || !ok(e) {
				return fmt.Errorf("want %s: %s %v; stderr:\n%s", what, agenttest.Describe(e), err, s.stderr)
			}
			return nil
		})
	}
	check("starting while loading", func(e *wire.WorkerEntry) bool { return e.Status == wire.StatusStarting })
	fake.SetLoading(false)
	fake.Set(3, 1, 900)
	check("busy with 3 slots", func(e *wire.WorkerEntry) bool { return e.Status == wire.StatusBusy && e.SlotsBusy == 3 })
	s.cancel()
	if err := s.result(t); exitCodeOf(err) == -1 {
		t.Fatalf("result %v", err)
	}
}

// TestSimulateHangFreezesProgress: K simulated workers go busy with a
// progress that never grows, and the queen marks them stalled.
func TestSimulateHangFreezesProgress(t *testing.T) {
	sys := agenttest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	stderr := &testutil.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- runWorker(&env{ctx: ctx, stdin: strings.NewReader(""), stdout: &testutil.Buffer{}, stderr: stderr},
			[]string{"--nats-url", sys.URL, "--hive-id", "h1", "--worker-id", "sim", "--interval", "100ms", "--simulate", "3", "--simulate-hang", "1"})
	}()
	t.Cleanup(func() { cancel(); <-done })
	agenttest.CheckFor(t, 10*time.Second, func() error {
		e, err := sys.Worker("h1.sim-0")
		if err != nil || e.Status != wire.StatusBusy || e.SlotsBusy != 1 {
			return fmt.Errorf("want sim-0 busy: %s %v", agenttest.Describe(e), err)
		}
		if e.Progress == nil || *e.Progress != 0 || e.Seq < 5 {
			return fmt.Errorf("want sim-0's progress frozen at 0 over 5 beats: %s", agenttest.Describe(e))
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil
	if !strings.Contains(stderr.String(), "goodbye sent") {
		t.Fatalf("no goodbye line: %s", stderr)
	}
}

// TestSuperviseChildExitsWhileNoBroker: the engine exits while the worker
// still waits for a broker; the worker ends with the engine's code rather
// than waiting on.
func TestSuperviseChildExitsWhileNoBroker(t *testing.T) {
	nowhere := fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePorts(t, 1)[0])
	s := startSupervised(t, nowhere, nil, "exit 5")
	if code := exitCodeOf(s.result(t)); code != 5 {
		t.Fatalf("exit code %d, want the engine's 5; stderr:\n%s", code, s.stderr)
	}
}

// TestEngineAPIKeyFromEnvNeverEchoed: llama-server started with --api-key
// answers 401 to /metrics and /props; the key comes from
// RBEE_ENGINE_API_KEY, goes out as a bearer token, and appears neither in
// the logs (the engine's command line included) nor in the beats.
func TestEngineAPIKeyFromEnvNeverEchoed(t *testing.T) {
	const key = "sk-env-5b2e8d"
	t.Setenv(EngineAPIKeyEnv, key)
	sys := agenttest.Start(t)
	fake := enginetest.Start(t, "llamacpp")
	fake.SetAPIKey(key)
	fake.Set(2, 0, 50)
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &testutil.Buffer{}, &testutil.Buffer{}
	done := make(chan error, 1)
	args := []string{"--nats-url", sys.URL, "--hive-id", "h1", "--worker-id", "w1", "--interval", "200ms", "--slots", "2",
		"--engine", "llamacpp", "--engine-url", fake.URL, "--engine-interval", "100ms",
		"--", "sh", "-c", "echo engine up; while :; do sleep 0.05; done", "llama-server", "--api-key", key}
	go func() {
		done <- runWorker(&env{ctx: ctx, stdin: strings.NewReader(""), stdout: stdout, stderr: stderr}, args)
	}()
	defer func() {
		cancel()
		<-done
	}()
	var last *wire.WorkerEntry
	agenttest.CheckFor(t, 10*time.Second, func() error {
		e, err := sys.Worker("h1.w1")
		if err != nil || e.Status != wire.StatusBusy || e.Health != wire.Healthy || e.Version != fake.Version {
			return fmt.Errorf("want busy, healthy, the engine's version read through the key: %s %v; stderr:\n%s", agenttest.Describe(e), err, stderr)
		}
		last = e
		return nil
	})
	if !fake.Authorized("/metrics") || !fake.Authorized("/props") {
		t.Error("requests carried no bearer token")
	}
	if b, _ := json.Marshal(last); strings.Contains(string(b), key) {
		t.Errorf("the key is in the beat: %s", b)
	}
	if !strings.Contains(stderr.String(), "--api-key [redacted]") {
		t.Errorf("the engine's command line is not logged redacted:\n%s", stderr)
	}
	if strings.Contains(stderr.String(), key) {
		t.Fatalf("the key is in the log:\n%s", stderr)
	}
}

func TestStatusShowsKVCache(t *testing.T) {
	kv := 62.6
	workers := []*wire.WorkerEntry{
		{Worker: wire.Worker{WorkerID: "w1", HiveID: "h1", Status: wire.StatusBusy, KVCachePercent: &kv}},
		{Worker: wire.Worker{WorkerID: "w2", HiveID: "h1", Status: wire.StatusDraining, Sleeping: true}},
		{Worker: wire.Worker{WorkerID: "w3", HiveID: "h1", Status: wire.StatusReady}},
	}
	var b strings.Builder
	printStatus(&b, workers, nil, time.Now())
	out := b.String()
	for _, want := range []string{" KV ", "63%", "- asleep"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}
