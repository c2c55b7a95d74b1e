package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/engine"
	"github.com/rbee/heartbeat/internal/agenttest"
	"github.com/rbee/heartbeat/internal/enginetest"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

const deadline = 10 * time.Second

func newWorker(t *testing.T, url, id string, eng *engine.Config) *worker.Worker {
	t.Helper()
	c := worker.DefaultConfig("h1", id)
	c.Interval, c.SlotsTotal, c.Device, c.Version = 200*time.Millisecond, 4, "cuda:0", "rbee-test"
	if eng != nil {
		c.Version = "" // the engine's own, once read
	}
	c.Engine, c.Logger = eng, testutil.Logger(t)
	w, err := worker.New(testutil.Connect(t, url), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	return w
}

// entry returns a poll function that reads key from the registry and
// returns an error describing it unless ok holds.
func entry(s *agenttest.System, key, what string, ok func(e *wire.WorkerEntry) bool) func() error {
	return func() error {
		e, err := s.Worker(key)
		if err != nil {
			return fmt.Errorf("want %s: %w", what, err)
		}
		if !ok(e) {
			return fmt.Errorf("want %s, registry has %s", what, agenttest.Describe(e))
		}
		return nil
	}
}

func progressIs(e *wire.WorkerEntry, n uint64) bool { return e.Progress != nil && *e.Progress == n }

func engineConfig(t *testing.T, kind engine.Kind, url string) *engine.Config {
	t.Helper()
	spec, err := engine.Preset(kind)
	if err != nil {
		t.Fatal(err)
	}
	if kind == engine.Generic {
		spec.Running, spec.Waiting, spec.Progress = "app_running", "app_waiting", "app_tokens_total"
	}
	c := engine.DefaultConfig(spec, url)
	c.Interval, c.Timeout = 100*time.Millisecond, 100*time.Millisecond
	return &c
}

// TestEngineReadingsReachTheRegistry drives each engine's documented answers
// through a real worker, broker and queen, and reads the registry entry back
// from KV at each step: loading, ready, busy with running and waiting
// requests, a token counter that grows, freezes and resets, and a probe that
// hangs past its timeout.
func TestEngineReadingsReachTheRegistry(t *testing.T) {
	sys := agenttest.Start(t)
	for _, kind := range engine.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			fake := enginetest.Start(t, string(kind))
			if kind == engine.LlamaCPP {
				fake.SetLoading(true)
			}
			w := newWorker(t, sys.URL, "w-"+string(kind), engineConfig(t, kind, fake.URL))
			if err := w.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			key := "h1.w-" + string(kind)
			check := func(what string, ok func(e *wire.WorkerEntry) bool) {
				t.Helper()
				agenttest.CheckFor(t, deadline, entry(sys, key, what, ok))
			}
			if kind == engine.LlamaCPP {
				check("starting while llama-server loads", func(e *wire.WorkerEntry) bool {
					return e.Status == wire.StatusStarting && e.Health == wire.Healthy && fake.Probes() > 0
				})
				fake.SetLoading(false)
			}
			fake.Set(0, 0, 10)
			check("ready and healthy", func(e *wire.WorkerEntry) bool {
				return e.Status == wire.StatusReady && e.Health == wire.Healthy && e.SlotsBusy == 0 &&
					(progressIs(e, 10) && e.Engine == string(kind))
			})
			if kind != engine.Generic {
				check("the engine's version and served model", func(e *wire.WorkerEntry) bool {
					return e.Version == fake.Version && e.ModelID == fake.Model && e.ModelID != ""
				})
			}

			fake.Set(2, 3, 100)
			check("busy with 2 running and 3 waiting", func(e *wire.WorkerEntry) bool {
				return e.Status == wire.StatusBusy && e.SlotsBusy == 2 &&
					(e.RequestsWaiting != nil && *e.RequestsWaiting == 3 && progressIs(e, 100))
			})
			fake.Set(2, 3, 180)
			first := ""
			check("progress grows to 180", func(e *wire.WorkerEntry) bool {
				first = e.InstanceID
				return e.Status == wire.StatusBusy && progressIs(e, 180)
			})
			// Frozen: the counter stays; the worker keeps beating it unchanged.
			seq := uint64(0)
			check("beats go on with the frozen counter", func(e *wire.WorkerEntry) bool {
				if seq == 0 {
					seq = e.Seq
				}
				return e.Seq >= seq+2 && e.InstanceID == first && progressIs(e, 180)
			})

			fake.Set(1, 0, 5) // the engine restarted: its counter began again
			check("a new instance after the counter reset", func(e *wire.WorkerEntry) bool {
				return e.InstanceID != first && e.Status == wire.StatusBusy && progressIs(e, 5)
			})

			fake.SetHang(true)
			check("unhealthy with the probe timeout, last good reading kept", func(e *wire.WorkerEntry) bool {
				return e.Health == wire.Unhealthy && strings.Contains(e.HealthReason, "no answer in time") &&
					e.SlotsBusy == 1 && (e.EngineStale && e.EngineAgeMs > 0 && progressIs(e, 5))
			})
			fake.SetHang(false)
			check("healthy again", func(e *wire.WorkerEntry) bool {
				return e.Health == wire.Healthy && (!e.EngineStale)
			})
		})
	}
}

// TestEngineFailingPastGraceIsStopped checks the grace: a failing engine is
// unhealthy at once and stopped once the grace has passed.
func TestEngineFailingPastGraceIsStopped(t *testing.T) {
	sys := agenttest.Start(t)
	fake := enginetest.Start(t, "vllm")
	ec := engineConfig(t, engine.VLLM, fake.URL)
	ec.Spec.Grace = 300 * time.Millisecond
	w := newWorker(t, sys.URL, "w1", ec)
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "ready", func(e *wire.WorkerEntry) bool { return e.Status == wire.StatusReady }))
	fake.SetFail(500)
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "stopped and unhealthy past the grace", func(e *wire.WorkerEntry) bool {
		return e.Status == wire.StatusStopped && e.Health == wire.Unhealthy && strings.Contains(e.HealthReason, "HTTP 500")
	}))
}

// watchKey collects every operation on key from the bucket's watcher.
type watchKey struct {
	mu  sync.Mutex
	ops []jetstream.KeyValueEntry
}

func watch(t *testing.T, kv jetstream.KeyValue, key string) *watchKey {
	t.Helper()
	wk := &watchKey{}
	w, err := kv.Watch(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
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
			wk.mu.Lock()
			wk.ops = append(wk.ops, e)
			wk.mu.Unlock()
		}
	}()
	return wk
}

// sequence returns the operations seen so far as "put:<status>/<health>" or "del".
func (wk *watchKey) sequence() []string {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	var out []string
	for _, e := range wk.ops {
		if e.Operation() != jetstream.KeyValuePut {
			out = append(out, "del")
			continue
		}
		v, err := wire.DecodeWorkerEntry(e.Value())
		if err != nil {
			out = append(out, "put:undecodable")
			continue
		}
		out = append(out, fmt.Sprintf("put:%s/%s:%s", v.Status, v.Health, v.HealthReason))
	}
	return out
}

// TestExitedBeatsStoppedThenGoodbye is what supervision does when the engine
// dies: the registry shows stopped and unhealthy with the reason, then the
// entry leaves.
func TestExitedBeatsStoppedThenGoodbye(t *testing.T) {
	sys := agenttest.Start(t)
	w := newWorker(t, sys.URL, "w1", nil)
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = w.SetStatus(wire.StatusReady, wire.Healthy, "")
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "ready", func(e *wire.WorkerEntry) bool { return e.Status == wire.StatusReady }))
	wk := watch(t, sys.Workers, "h1.w1")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Exited(ctx, "engine killed by signal killed"); err != nil {
		t.Fatal(err)
	}
	if err := w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	agenttest.CheckFor(t, deadline, func() error {
		seq := wk.sequence()
		if len(seq) >= 2 && seq[len(seq)-1] == "del" && seq[len(seq)-2] == "put:stopped/unhealthy:engine killed by signal killed" {
			return nil
		}
		return fmt.Errorf("want a stopped/unhealthy put then a delete, saw %v", seq)
	})
}

func TestRestartIsANewInstanceWithoutLeaving(t *testing.T) {
	sys := agenttest.Start(t)
	w := newWorker(t, sys.URL, "w1", nil)
	if err := w.Restart(); !errors.Is(err, worker.ErrNotRunning) {
		t.Fatalf("Restart before Start: %v", err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := w.InstanceID()
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "first instance", func(e *wire.WorkerEntry) bool { return e.InstanceID == first }))
	wk := watch(t, sys.Workers, "h1.w1")
	w.AddProgress(50)
	if err := w.Restart(); err != nil {
		t.Fatal(err)
	}
	if w.InstanceID() == first {
		t.Fatal("Restart kept the instance ID")
	}
	if p := w.State().Progress; p != nil {
		t.Fatalf("progress %d survived the restart", *p)
	}
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "second instance", func(e *wire.WorkerEntry) bool { return e.InstanceID == w.InstanceID() }))
	for _, op := range wk.sequence() {
		if op == "del" {
			t.Fatalf("the entry left during a restart: %v", wk.sequence())
		}
	}
	if s := w.Stats(); s.Sent < 2 {
		t.Fatalf("stats %+v lost the first instance's beats", s)
	}
}

func TestProgress(t *testing.T) {
	w := newWorker(t, testutil.Server(t).ClientURL(), "w1", nil)
	if err := w.SetProgress(10); err != nil {
		t.Fatal(err)
	}
	if n := w.AddProgress(5); n != 15 {
		t.Fatalf("AddProgress: %d", n)
	}
	if err := w.SetProgress(3); !errors.Is(err, worker.ErrProgressBackwards) {
		t.Fatalf("backwards: %v", err)
	}
	if p := w.State().Progress; p == nil || *p != 15 {
		t.Fatalf("progress changed by a refused value: %v", p)
	}
	w.SetRequestsWaiting(4)
	if q := w.State().RequestsWaiting; q == nil || *q != 4 {
		t.Fatal("requests waiting not set")
	}
	w.SetRequestsWaiting(-1)
	if w.State().RequestsWaiting != nil {
		t.Fatal("negative requests waiting not cleared")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		spoil func(c *worker.Config)
		want  string
	}{
		{"interval too short", func(c *worker.Config) { c.Interval = 5 * time.Millisecond }, "interval 5ms: want 10ms to 3600000ms"},
		{"interval too long", func(c *worker.Config) { c.Interval = 2 * time.Hour }, "want 10ms to 3600000ms"},
		{"negative pid", func(c *worker.Config) { c.PID = -1 }, "pid"},
		{"bad engine", func(c *worker.Config) {
			s, _ := engine.Preset(engine.VLLM)
			ec := engine.DefaultConfig(s, "nope")
			c.Engine = &ec
		}, "engine url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := worker.DefaultConfig("h", "w")
			tt.spoil(&c)
			err := c.Validate()
			if !errors.Is(err, worker.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want ErrInvalidConfig with %q", err, tt.want)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	sys := agenttest.Start(t)
	w := newWorker(t, sys.URL, "w1", nil)
	if err := w.Stop(context.Background()); err != nil {
		t.Fatalf("Stop before Start: %v", err)
	}
	if err := w.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("Start after Stop: %v", err)
	}

	w = newWorker(t, sys.URL, "w2", nil)
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); _ = w.Start(context.Background()) }()
	go func() { defer wg.Done(); _ = w.Stop(context.Background()) }()
	go func() { defer wg.Done(); _ = w.InstanceID(); _ = w.Stats(); _ = w.State() }()
	go func() { defer wg.Done(); _ = w.SetStatus(wire.StatusBusy, wire.Healthy, ""); w.AddProgress(1) }()
	wg.Wait()
	_ = w.Stop(context.Background())

	w = newWorker(t, sys.URL, "w3", nil)
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	if err := w.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := w.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// TestFrozenEngineCounterUnderLoadIsStalled: an engine that reports running
// requests while its generated-token counter stops growing is what a hung
// CUDA kernel looks like from outside. The queen marks the worker stalled,
// and alive again once the counter grows.
func TestFrozenEngineCounterUnderLoadIsStalled(t *testing.T) {
	sys := agenttest.Start(t)
	fake := enginetest.Start(t, "vllm")
	fake.Set(3, 2, 1000)
	w := newWorker(t, sys.URL, "w1", engineConfig(t, engine.VLLM, fake.URL))
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "busy and alive", func(e *wire.WorkerEntry) bool {
		return e.Status == wire.StatusBusy && progressIs(e, 1000) && (e.Liveness == "" || e.Liveness == wire.LivenessAlive)
	}))
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "stalled: busy, counter frozen at 1000", func(e *wire.WorkerEntry) bool {
		return e.Liveness == wire.LivenessStalled && e.Status == wire.StatusBusy && progressIs(e, 1000) && e.Health == wire.Healthy
	}))
	fake.Set(3, 2, 1100)
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "alive again once the counter grows", func(e *wire.WorkerEntry) bool {
		return (e.Liveness == "" || e.Liveness == wire.LivenessAlive) && progressIs(e, 1100)
	}))
}

// TestLongGenerationIsNeverStalled is one request generating for many stall
// windows: the engine's per-request counter stays put while its per-step
// counter moves, and the queen never marks the worker stalled.
func TestLongGenerationIsNeverStalled(t *testing.T) {
	sys := agenttest.Start(t)
	fake := enginetest.Start(t, "llamacpp")
	fake.SetFinished(0)
	fake.Set(1, 0, 1)
	w := newWorker(t, sys.URL, "w1", engineConfig(t, engine.LlamaCPP, fake.URL))
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // the engine decoding: one step every 20 ms
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for n := uint64(2); ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				fake.Set(1, 0, n)
			}
		}
	}()
	// 400 steps are 8 s of decoding: 40 worker intervals, 13 stall windows.
	agenttest.CheckFor(t, 60*time.Second, func() error {
		e, err := sys.Worker("h1.w1")
		if err != nil {
			return err
		}
		if e.Liveness == wire.LivenessStalled {
			t.Fatalf("a generating worker was marked stalled: %s", agenttest.Describe(e))
		}
		if e.Status != wire.StatusBusy || e.Progress == nil || *e.Progress < 400 {
			return fmt.Errorf("want busy with progress 400, registry has %s", agenttest.Describe(e))
		}
		return nil
	})
}

// TestSleepAndKVCacheReachTheRegistry: a sleeping vLLM answers /health 200
// and serves nothing; the registry must not call it ready.
func TestSleepAndKVCacheReachTheRegistry(t *testing.T) {
	sys := agenttest.Start(t)
	fake := enginetest.Start(t, "vllm")
	fake.SetKV(0.25)
	w := newWorker(t, sys.URL, "w1", engineConfig(t, engine.VLLM, fake.URL))
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "ready, kv 25%", func(e *wire.WorkerEntry) bool {
		return e.Status == wire.StatusReady && !e.Sleeping && e.KVCachePercent != nil && *e.KVCachePercent == 25
	}))
	fake.SetSleeping(true)
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "sleeping and draining", func(e *wire.WorkerEntry) bool {
		return e.Status == wire.StatusDraining && e.Sleeping && e.Health == wire.Healthy
	}))
	fake.SetSleeping(false)
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "ready once awake", func(e *wire.WorkerEntry) bool {
		return e.Status == wire.StatusReady && !e.Sleeping
	}))
}

// TestInfoFailureKeepsTheLoadFigures is a vLLM behind a proxy that forwards
// only /health and /metrics: the load figures are read and beaten, health
// stays healthy, and no version but the engine's is ever shown.
func TestInfoFailureKeepsTheLoadFigures(t *testing.T) {
	sys := agenttest.Start(t)
	fake := enginetest.Start(t, "vllm")
	fake.SetPathFail("/version", 404)
	fake.Set(3, 2, 500)
	w := newWorker(t, sys.URL, "w1", engineConfig(t, engine.VLLM, fake.URL))
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	agenttest.CheckFor(t, deadline, entry(sys, "h1.w1", "busy and healthy with the load, no version", func(e *wire.WorkerEntry) bool {
		return e.Status == wire.StatusBusy && e.Health == wire.Healthy && e.SlotsBusy == 3 && !e.EngineStale &&
			e.RequestsWaiting != nil && *e.RequestsWaiting == 2 && progressIs(e, 500) && e.Version == "" && e.ModelID == fake.Model
	}))
}

// TestExitedAfterTheBeatLoopEndedGoodbyeCarriesIt: the signal that stops
// the process has ended the beat loop; the engine then exits non-zero. The
// goodbye itself must say unhealthy, with the exit as the reason.
func TestExitedAfterTheBeatLoopEndedGoodbyeCarriesIt(t *testing.T) {
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	msgs := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe("rbee.hb.worker.h1.w1", msgs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	w := newWorker(t, srv.ClientURL(), "w1", nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitSent(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	cancel() // SIGTERM through the signal context
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	if err := w.Exited(wctx, "engine killed by signal aborted"); err != nil {
		t.Fatalf("Exited after the beat loop ended: %v", err)
	}
	if err := w.Stop(wctx); err != nil {
		t.Fatal(err)
	}
	for {
		m := testutil.Recv(t, msgs, 10*time.Second, "the goodbye")
		if m.Header.Get(wire.HeaderEvent) != wire.EventGoodbye {
			continue
		}
		b, err := wire.DecodeWorker(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if b.Status != wire.StatusStopped || b.Health != wire.Unhealthy || b.HealthReason != "engine killed by signal aborted" {
			t.Fatalf("goodbye says %s/%s %q, want stopped/unhealthy with the exit", b.Status, b.Health, b.HealthReason)
		}
		return
	}
}
