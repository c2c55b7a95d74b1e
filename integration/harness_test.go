// Package integration holds black-box tests of rbee against real in-process
// nats-servers: the whole pipeline, rejections, restarts, clusters and the
// tools operators and external subscribers use.
package integration

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// events records registry events for assertions.
type events struct {
	mu  sync.Mutex
	all []registry.Event
}

func (e *events) add(ev registry.Event) { e.mu.Lock(); e.all = append(e.all, ev); e.mu.Unlock() }

// find returns the first event of type typ for key, if any.
func (e *events) find(typ registry.EventType, key string) (registry.Event, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.all {
		if ev.Type == typ && ev.Key == key {
			return ev, true
		}
	}
	return registry.Event{}, false
}

func (e *events) count(typ registry.EventType, key string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.all {
		if ev.Type == typ && ev.Key == key {
			n++
		}
	}
	return n
}

func conn(t *testing.T, url, name string) *nats.Conn {
	t.Helper()
	c := natsconn.DefaultConfig(url, name)
	c.ReconnectWait = 20 * time.Millisecond
	c.Logger = testutil.Logger(t)
	nc, err := natsconn.Connect(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// missedOf returns the queen's missed-beats setting for tests that state a
// TTL: they all beat so that TTL = 3 × interval.
func missedOf(time.Duration) int { return 3 }

// startQueen starts a queen on url and records its events; entries expire
// after 3 of their own intervals (the tests' ttl).
func startQueen(t *testing.T, url string, ttl time.Duration) (*queen.Queen, *events) {
	t.Helper()
	ev := &events{}
	cfg := queen.DefaultConfig()
	cfg.Missed = missedOf(ttl)
	cfg.Logger = testutil.Logger(t)
	cfg.OnEvent = ev.add
	q, err := queen.New(conn(t, url, "queen"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	return q, ev
}

func startWorker(t *testing.T, nc *nats.Conn, hiveID, workerID string, interval time.Duration) *worker.Worker {
	t.Helper()
	c := worker.DefaultConfig(hiveID, workerID)
	c.Interval = interval
	c.ModelID = "model-" + workerID
	c.Device = "cuda:0"
	c.URL = "http://127.0.0.1:9000/" + workerID
	c.Version = "test"
	c.SlotsTotal = 4
	w, err := worker.New(nc, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	return w
}

// kvs opens the registry buckets with a separate connection.
func kvs(t *testing.T, url string) (workers, hives jetstream.KeyValue) {
	t.Helper()
	js, err := jetstream.New(testutil.Connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := js.KeyValue(ctx, "rbee_workers")
	if err != nil {
		t.Fatal(err)
	}
	h, err := js.KeyValue(ctx, "rbee_hives")
	if err != nil {
		t.Fatal(err)
	}
	return w, h
}

func getWorker(kv jetstream.KeyValue, key string) *wire.WorkerEntry {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := kv.Get(ctx, key)
	if err != nil {
		return nil
	}
	v, err := wire.DecodeWorkerEntry(e.Value())
	if err != nil {
		return nil
	}
	return v
}

func getHive(kv jetstream.KeyValue, key string) *wire.HiveEntry {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := kv.Get(ctx, key)
	if err != nil {
		return nil
	}
	v, err := wire.DecodeHiveEntry(e.Value())
	if err != nil {
		return nil
	}
	return v
}

// keys returns the live keys of a bucket.
func keys(t *testing.T, kv jetstream.KeyValue) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out := map[string]bool{}
	l, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range l.Keys() {
		out[k] = true
	}
	return out
}
