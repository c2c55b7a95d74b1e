package publisher_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/wire"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		f    func(c *publisher.Config)
		ok   bool
	}{
		{"default", func(c *publisher.Config) {}, true},
		{"no subject", func(c *publisher.Config) { c.Subject = "" }, false},
		{"no schema", func(c *publisher.Config) { c.Schema = "" }, false},
		{"interval too short", func(c *publisher.Config) { c.Interval = time.Millisecond }, false},
		{"interval too long", func(c *publisher.Config) { c.Interval = 2 * time.Hour }, false},
		{"negative jitter", func(c *publisher.Config) { c.Jitter = -0.1 }, false},
		{"jitter one", func(c *publisher.Config) { c.Jitter = 1 }, false},
		{"negative min gap", func(c *publisher.Config) { c.MinGap = -1 }, false},
		{"long instance", func(c *publisher.Config) { c.InstanceID = string(make([]byte, 65)) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := publisher.DefaultConfig("rbee.hb.hive.h1", wire.SchemaHive)
			tt.f(&c)
			err := c.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, publisher.ErrInvalidConfig) {
				t.Fatalf("%v does not wrap ErrInvalidConfig", err)
			}
		})
	}
}

func TestNextDelay(t *testing.T) {
	iv := 30 * time.Second
	tests := []struct {
		name string
		u    float64
		want time.Duration
	}{
		{"lowest", 0, 27 * time.Second},
		{"middle", 0.5, 30 * time.Second},
		{"near highest", 0.999999, 33 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := publisher.NextDelay(iv, 0.1, tt.u)
			if d := got - tt.want; d > time.Millisecond || d < -time.Millisecond {
				t.Fatalf("NextDelay(u=%v) = %s, want %s", tt.u, got, tt.want)
			}
		})
	}
}

func TestTriggerWait(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name  string
		since time.Duration
		want  time.Duration
	}{
		{"right after a beat", 10 * time.Millisecond, 90 * time.Millisecond},
		{"exactly the gap", 100 * time.Millisecond, 0},
		{"long after", time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := publisher.TriggerWait(t0, t0.Add(tt.since), 100*time.Millisecond); got != tt.want {
				t.Fatalf("TriggerWait = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestTriggerFloodIsMerged flips the status many times in a row: the flips
// are merged into few beats, and the last state goes out.
func TestTriggerFloodIsMerged(t *testing.T) {
	_, got, p, mu, status := setup(t, time.Hour)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Abandon()
	testutil.Eventually(t, 5*time.Second, func() bool { return got.len() == 1 }, "first beat")
	for i := range 1000 {
		mu.Lock()
		*status = []wire.Status{wire.StatusBusy, wire.StatusReady}[i%2]
		mu.Unlock()
		p.Trigger()
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		m := got.all()
		w, err := wire.DecodeWorker(m[len(m)-1].Data)
		return err == nil && w.Status == wire.StatusReady
	}, "last state sent")
	if n := got.len(); n > 100 {
		t.Fatalf("1000 triggers sent %d beats; they should be merged", n)
	}
}

type beats struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func (b *beats) add(m *nats.Msg) { b.mu.Lock(); b.msgs = append(b.msgs, m); b.mu.Unlock() }
func (b *beats) len() int        { b.mu.Lock(); defer b.mu.Unlock(); return len(b.msgs) }
func (b *beats) all() []*nats.Msg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*nats.Msg(nil), b.msgs...)
}

func setup(t *testing.T, interval time.Duration) (*nats.Conn, *beats, *publisher.Publisher[*wire.Worker], *sync.Mutex, *wire.Status) {
	t.Helper()
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL(), nats.ReconnectBufSize(-1))
	sub := testutil.Connect(t, srv.ClientURL())
	got := &beats{}
	if _, err := sub.Subscribe("rbee.hb.>", got.add); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	status := wire.StatusReady
	cfg := publisher.DefaultConfig("rbee.hb.worker.h1.w1", wire.SchemaWorker)
	cfg.Interval = interval
	p, err := publisher.New(nc, cfg, func() *wire.Worker {
		mu.Lock()
		defer mu.Unlock()
		return &wire.Worker{Meta: wire.Meta{Health: wire.Healthy}, HiveID: "h1", WorkerID: "w1", Status: status}
	})
	if err != nil {
		t.Fatal(err)
	}
	return nc, got, p, &mu, &status
}

func TestBeatsAndGoodbye(t *testing.T) {
	_, got, p, _, _ := setup(t, 20*time.Millisecond)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return got.len() >= 5 }, "five beats")
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := p.Start(context.Background()); !errors.Is(err, publisher.ErrStopped) {
		t.Fatalf("Start after Stop = %v", err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		m := got.all()
		return m[len(m)-1].Header.Get(wire.HeaderEvent) == wire.EventGoodbye
	}, "goodbye beat")
	var last uint64
	msgs := got.all()
	for i, m := range msgs {
		if m.Header.Get(wire.HeaderContentType) != wire.ContentTypeMsgpack || m.Header.Get(wire.HeaderSchema) != wire.SchemaWorker {
			t.Fatalf("beat %d headers %v", i, m.Header)
		}
		if i < len(msgs)-1 && m.Header.Get(wire.HeaderEvent) != "" {
			t.Fatalf("beat %d carries an event header", i)
		}
		w, err := wire.DecodeWorker(m.Data)
		if err != nil {
			t.Fatalf("beat %d: %v", i, err)
		}
		if w.Seq != last+1 || w.InstanceID != p.InstanceID() || w.IntervalMs != 20 {
			t.Fatalf("beat %d: seq %d after %d, instance %q, interval %d", i, w.Seq, last, w.InstanceID, w.IntervalMs)
		}
		last = w.Seq
	}
	if s := p.Stats(); s.Sent != uint64(len(msgs)) || s.Failed != 0 {
		t.Fatalf("stats %+v for %d beats", s, len(msgs))
	}
}

// TestTriggerBeatsAtOnce uses an interval far longer than the test: any beat
// after the first can only come from Trigger.
func TestTriggerBeatsAtOnce(t *testing.T) {
	_, got, p, mu, status := setup(t, time.Hour)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Abandon()
	testutil.Eventually(t, 5*time.Second, func() bool { return got.len() == 1 }, "first beat at once")
	mu.Lock()
	*status = wire.StatusBusy
	mu.Unlock()
	p.Trigger()
	testutil.Eventually(t, 5*time.Second, func() bool { return got.len() == 2 }, "triggered beat")
	w, err := wire.DecodeWorker(got.all()[1].Data)
	if err != nil || w.Status != wire.StatusBusy || w.Seq != 2 {
		t.Fatalf("triggered beat %+v %v", w, err)
	}
}

// TestNoStaleReplay proves beats built while disconnected are dropped, not
// queued and replayed after the reconnect, and that a fresh beat follows the
// reconnect at once.
func TestNoStaleReplay(t *testing.T) {
	dir := t.TempDir()
	srv := testutil.ServerIn(t, dir)
	url := srv.ClientURL()
	nc := testutil.Connect(t, url, nats.ReconnectBufSize(-1), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	cfg := publisher.DefaultConfig("rbee.hb.worker.h1.w1", wire.SchemaWorker)
	cfg.Interval = 20 * time.Millisecond
	p, err := publisher.New(nc, cfg, func() *wire.Worker {
		return &wire.Worker{Meta: wire.Meta{Health: wire.Healthy}, HiveID: "h1", WorkerID: "w1", Status: wire.StatusReady}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Abandon()
	testutil.Eventually(t, 5*time.Second, func() bool { return p.Stats().Sent >= 2 }, "beats before outage")
	srv.Shutdown()
	testutil.Eventually(t, 5*time.Second, func() bool { return p.Stats().Failed >= 3 }, "failed beats while down")
	st := p.Stats()
	builtBefore := st.Sent + st.Failed

	// Same port and data: the client reconnects by itself.
	srv2 := restartOnSamePort(t, dir, url)
	sub := testutil.Connect(t, srv2.ClientURL())
	got := &beats{}
	if _, err := sub.Subscribe("rbee.hb.>", got.add); err != nil {
		t.Fatal(err)
	}
	_ = sub.Flush()
	testutil.Eventually(t, 5*time.Second, func() bool { return got.len() >= 3 }, "beats after reconnect")
	// Every beat seen after the reconnect was built after it: no seq of a beat
	// built during the outage is ever delivered.
	for _, m := range got.all() {
		w, err := wire.DecodeWorker(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if w.Seq <= builtBefore {
			t.Fatalf("seq %d was built during the outage (%d built by then)", w.Seq, builtBefore)
		}
	}
}
