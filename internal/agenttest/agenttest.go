// Package agenttest starts what the agents' tests beat into: a real
// in-process nats-server and the real queen, and reads the registry back
// from its KV buckets.
package agenttest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/wire"
)

// System is a broker with a queen and the registry buckets.
type System struct {
	URL     string
	Workers jetstream.KeyValue
	Hives   jetstream.KeyValue
}

// Start starts a broker on 127.0.0.1 (random port, store in t.TempDir()) and
// a queen with its defaults, and opens the registry buckets.
func Start(t testing.TB) *System {
	t.Helper()
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	qc := queen.DefaultConfig()
	qc.Logger = testutil.Logger(t)
	q, err := queen.New(nc, qc)
	if err != nil {
		t.Fatal(err)
	}
	// The queen runs until its Start context ends (the lifecycle contract).
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Stop(context.Background()) })
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &System{URL: srv.ClientURL()}
	if s.Workers, err = js.KeyValue(ctx, "rbee_workers"); err != nil {
		t.Fatal(err)
	}
	if s.Hives, err = js.KeyValue(ctx, "rbee_hives"); err != nil {
		t.Fatal(err)
	}
	return s
}

// ErrAbsent is returned by Worker and Hive for a key not in the registry.
var ErrAbsent = errors.New("not in the registry")

// Worker reads the registry entry of hive.worker.
func (s *System) Worker(key string) (*wire.WorkerEntry, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := s.Workers.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s: %w", key, ErrAbsent)
	}
	if err != nil {
		return nil, err
	}
	return wire.DecodeWorkerEntry(e.Value())
}

// Hive reads the registry entry of hive.
func (s *System) Hive(key string) (*wire.HiveEntry, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := s.Hives.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s: %w", key, ErrAbsent)
	}
	if err != nil {
		return nil, err
	}
	return wire.DecodeHiveEntry(e.Value())
}

// CheckFor polls f until it returns nil, failing with its last error at the
// deadline (testutil.CheckFor).
func CheckFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, 20*time.Millisecond, f)
}

// Describe renders the worker keys the agents' tests check, for failure messages.
func Describe(e *wire.WorkerEntry) string {
	if e == nil {
		return "<absent>"
	}
	p, q := "nil", "nil"
	if e.Progress != nil {
		p = fmt.Sprint(*e.Progress)
	}
	if e.RequestsWaiting != nil {
		q = fmt.Sprint(*e.RequestsWaiting)
	}
	return fmt.Sprintf("{instance=%.8s seq=%d status=%s health=%s reason=%q slots=%d/%d waiting=%s progress=%s model=%q version=%q pid=%d engine=%q stale=%v age=%d liveness=%q}",
		e.InstanceID, e.Seq, e.Status, e.Health, e.HealthReason, e.SlotsBusy, e.SlotsTotal, q, p, e.ModelID, e.Version, e.PID, e.Engine, e.EngineStale, e.EngineAgeMs, e.Liveness)
}
