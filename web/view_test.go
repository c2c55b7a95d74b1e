package web

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// system starts a server and a queen and returns the server's URL and a
// JetStream context on it.
func system(t *testing.T) (string, jetstream.JetStream) {
	t.Helper()
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	qc := queen.DefaultConfig() // entries live 3 of their own 100 ms intervals, rounded up: 1 s
	qc.Logger = testutil.Logger(t)
	q, err := queen.New(nc, qc)
	if err != nil {
		t.Fatal(err)
	}
	// Start's context bounds the queen's whole run: t.Context ends with the test.
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	return srv.ClientURL(), js
}

func startWorker(t *testing.T, url, hive, id string) *worker.Worker {
	t.Helper()
	nc := testutil.Connect(t, url, nats.ReconnectBufSize(-1))
	c := worker.DefaultConfig(hive, id)
	c.Interval, c.ModelID, c.Device, c.SlotsTotal = 100*time.Millisecond, "m-"+id, "cuda:0", 2
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

func startView(t *testing.T, js jetstream.JetStream) *View {
	t.Helper()
	return startViewWith(t, DefaultConfig(js))
}

// startViewWith starts a view with cfg, stopped when the test ends.
func startViewWith(t *testing.T, cfg Config) *View {
	t.Helper()
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Start's context bounds the view's whole run, so it has no deadline here.
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Stop)
	return v
}

// message is one server-sent event.
type message struct {
	name string
	data string
}

// stream reads a server-sent event stream into memory.
type stream struct {
	mu   sync.Mutex
	msgs []message
	err  error
}

func (s *stream) all() ([]message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]message(nil), s.msgs...), s.err
}

func (s *stream) String() string {
	msgs, err := s.all()
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "%s %s\n", m.name, m.data)
	}
	if err != nil {
		fmt.Fprintf(&b, "stream ended: %v\n", err)
	}
	return b.String()
}

// follow opens url's event stream and reads it until the test ends.
func follow(t *testing.T, url string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %d %s %s", url, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	s := &stream{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var m message
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				m.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				m.data = line[len("data: "):]
			case line == "" && m.name != "":
				s.mu.Lock()
				s.msgs = append(s.msgs, m)
				s.mu.Unlock()
				m = message{}
			}
		}
		s.mu.Lock()
		s.err = sc.Err()
		if s.err == nil {
			s.err = io.EOF
		}
		s.mu.Unlock()
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	return s
}

// waitFor polls cond until it returns nil or 10 s pass, then fails with its
// last error and the stream so far.
func waitFor(t *testing.T, s *stream, cond func([]message) error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		msgs, _ := s.all()
		err := cond(msgs)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v; stream so far:\n%s", err, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// has returns nil if some message named name has data containing every want.
func has(name string, want ...string) func([]message) error {
	return func(msgs []message) error {
	next:
		for _, m := range msgs {
			if m.name != name {
				continue
			}
			for _, w := range want {
				if !strings.Contains(m.data, w) {
					continue next
				}
			}
			return nil
		}
		return fmt.Errorf("no %q message with %q", name, want)
	}
}

// TestStream follows a page's stream through a worker's life: the snapshot
// holds the worker already running, a new worker arrives as an event and an
// update, a goodbye as a left event and a removed key.
func TestStream(t *testing.T) {
	url, js := system(t)
	startWorker(t, url, "h1", "w1")
	v := startView(t, js)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(v.watcher.Workers()) == 1 }, "view sees w1")
	srv := httptest.NewServer(v.Events())
	t.Cleanup(srv.Close) // after the streams' cleanups: Close waits for open streams

	s := follow(t, srv.URL)
	waitFor(t, s, func(msgs []message) error {
		if len(msgs) == 0 || msgs[0].name != "snapshot" {
			return errors.New("first message is not the snapshot")
		}
		var snap snapshot
		if err := json.Unmarshal([]byte(msgs[0].data), &snap); err != nil {
			return err
		}
		if len(snap.Workers) != 1 || snap.Workers[0].WorkerID != "w1" || snap.NowMs == 0 {
			return fmt.Errorf("snapshot workers %+v now %d", snap.Workers, snap.NowMs)
		}
		return nil
	})

	w2 := startWorker(t, url, "h1", "w2")
	waitFor(t, s, has("event", `"event":"joined"`, `"key":"h1.w2"`, `"model_id":"m-w2"`))
	waitFor(t, s, has("update", `"worker_id":"w2"`))
	if err := w2.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, has("event", `"event":"left"`, `"key":"h1.w2"`))
	waitFor(t, s, has("update", `"removed_workers":["h1.w2"]`))

	// A page connecting now gets the recent events in its snapshot.
	s2 := follow(t, srv.URL)
	waitFor(t, s2, has("snapshot", `"event":"joined"`, `"event":"left"`, `"queens":[{`, `"state":"ok"`))
}

// TestRecentEvents: a page gets the last Events events, oldest first, also
// after more than Events came (the ring wrapped), and those its filter keeps.
func TestRecentEvents(t *testing.T) {
	_, js := system(t)
	cfg := DefaultConfig(js)
	cfg.Events = 3
	v := startViewWith(t, cfg)
	keys := func(f events.Filter) []string {
		_, msg, err := v.subscribe(f)
		if err != nil {
			t.Fatal(err)
		}
		var snap snapshot
		if err := json.Unmarshal(bytes.TrimSpace(bytes.TrimPrefix(msg, []byte("event: snapshot\ndata: "))), &snap); err != nil {
			t.Fatalf("snapshot %q: %v", msg, err)
		}
		var out []string
		for _, e := range snap.Events {
			out = append(out, e.Key)
		}
		return out
	}
	for i := range 7 {
		typ := registry.Joined
		if i%2 == 1 {
			typ = registry.Left
		}
		v.OnEvent(registry.Event{Type: typ, Kind: subjects.KindWorker, Key: fmt.Sprintf("h.w%d", i)})
		want := []string{}
		for j := max(0, i-2); j <= i; j++ {
			want = append(want, fmt.Sprintf("h.w%d", j))
		}
		if got := keys(events.Filter{}); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after %d events the snapshot's events are %v, want %v", i+1, got, want)
		}
	}
	left, err := events.ParseFilter([]string{"left"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(left); fmt.Sprint(got) != "[h.w5]" {
		t.Fatalf("filtered to left: %v, want [h.w5]", got)
	}
}

// TestSlowPageDropped: a page whose queue is full is disconnected, not
// waited for, and counted.
func TestSlowPageDropped(t *testing.T) {
	_, js := system(t)
	cfg := DefaultConfig(js)
	cfg.ClientBuffer = 1
	v := startViewWith(t, cfg)
	c, _, err := v.subscribe(events.Filter{}) // nobody reads c.ch
	if err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	v.broadcastLocked("event", wire.Event{Event: "joined"})
	v.broadcastLocked("event", wire.Event{Event: "left"})
	v.mu.Unlock()
	select {
	case <-c.gone:
	default:
		t.Fatal("a page with a full queue is still connected")
	}
	if v.Dropped() != 1 {
		t.Fatalf("Dropped() = %d, want 1", v.Dropped())
	}
	v.unsubscribe(c) // after a drop: no second close
}

func TestConfigValidate(t *testing.T) {
	_, js := system(t)
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"default", func(*Config) {}, ""},
		{"no jetstream", func(c *Config) { c.JetStream = nil }, "JetStream is required"},
		{"negative events", func(c *Config) { c.Events = -1 }, "Events is negative"},
		{"zero flush", func(c *Config) { c.FlushEvery = 0 }, "must be positive"},
		{"zero buffer", func(c *Config) { c.ClientBuffer = 0 }, "at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig(js)
			tt.change(&c)
			_, err := New(c)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.want != "" && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("New: %v, want ErrInvalidConfig with %q", err, tt.want)
			}
		})
	}
}

// TestLifecycle holds the lifecycle contract: Stop before Start and twice,
// a second Start, Start after Stop, Stop racing Start, and the stream
// answering 503 when the view is not running.
func TestLifecycle(t *testing.T) {
	_, js := system(t)
	newView := func() *View {
		v, err := New(DefaultConfig(js))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	status := func(v *View) int {
		rec := httptest.NewRecorder()
		v.Events().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/events", nil))
		return rec.Code
	}

	v := newView()
	if code := status(v); code != http.StatusServiceUnavailable {
		t.Fatalf("stream before Start: %d, want 503", code)
	}
	v.Stop()
	v.Stop()
	if err := v.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("Start after Stop: %v, want ErrStarted", err)
	}

	v = newView()
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := v.Start(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("second Start: %v, want ErrStarted", err)
	}
	v.Stop()
	v.Stop()
	if code := status(v); code != http.StatusServiceUnavailable {
		t.Fatalf("stream after Stop: %d, want 503", code)
	}

	for range 5 {
		v := newView()
		var wg sync.WaitGroup
		wg.Add(3)
		go func() { defer wg.Done(); _ = v.Start(context.Background()) }()
		go func() { defer wg.Done(); v.Stop() }()
		go func() { defer wg.Done(); _ = v.Dropped(); _ = status(v) }()
		wg.Wait()
		v.Stop()
		if code := status(v); code != http.StatusServiceUnavailable {
			t.Fatalf("stream after Stop raced Start: %d, want 503", code)
		}
	}

	// The context passed to Start ends the view like Stop.
	v = newView()
	ctx, cancel := context.WithCancel(context.Background())
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c, _, err := v.subscribe(events.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-c.gone:
	case <-time.After(10 * time.Second):
		t.Fatal("pages still connected 10 s after Start's context ended")
	}
	v.Stop()
}

func TestStatic(t *testing.T) {
	srv := httptest.NewServer(Static())
	defer srv.Close()
	for _, path := range []string{"/", "/app.js", "/style.css"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) == 0 {
			t.Fatalf("GET %s: %d, %d bytes", path, resp.StatusCode, len(b))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Fatalf("GET %s: Content-Security-Policy %q", path, csp)
		}
		// Offline and escaped: nothing loaded from elsewhere, no markup built from strings.
		for _, bad := range []string{"http://", "https://", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"} {
			if strings.Contains(string(b), bad) {
				t.Fatalf("GET %s contains %q", path, bad)
			}
		}
	}
}
