package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// TestStressForgedBeats publishes one forged message for each of three real
// workers, straight on NATS: a goodbye with a new instance ID, a beat with the
// worker's own instance and seq 2^53, and a beat with a new instance ID. It
// asserts, for each:
//   - the lockout is at most one TTL: the first of the real worker's own beats
//     to be written again was sent within one TTL and one interval of the
//     forgery (judged by the beats' own sent_at_ms, not by how fast the
//     machine is);
//   - for the two new instances, the conflict is reported: the entry carries
//     conflict: true at some point, or a conflict counter of the queen grows.
func TestStressForgedBeats(t *testing.T) {
	const (
		interval = time.Second
		ttl      = 3 * interval
	)
	srv := testutil.Server(t)
	q, _ := startQueen(t, srv.ClientURL(), ttl)
	w := watchWorkers(t, srv.ClientURL())
	nc := conn(t, srv.ClientURL(), "workers")
	real := map[string]string{} // key → the real instance
	for i := range 3 {
		wk := startWorker(t, nc, "gpu-node-1", fmt.Sprintf("w%d", i), interval)
		real[fmt.Sprintf("gpu-node-1.w%d", i)] = wk.InstanceID()
	}
	testutil.Eventually(t, 20*time.Second, func() bool { n, _ := w.present(hiveKeys("gpu-node-1"), time.Time{}); return n == 3 },
		"3 workers registered: %s", w)
	window(2 * interval)

	forgeries := []struct {
		key, what   string
		instance    string
		seq         uint64
		goodbye     bool
		newInstance bool
	}{
		{"gpu-node-1.w0", "a goodbye with a new instance ID", "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0", 1, true, true},
		{"gpu-node-1.w1", "a beat with the worker's own instance and seq 2^53", real["gpu-node-1.w1"], 1 << 53, false, false},
		{"gpu-node-1.w2", "a beat with a new instance ID", "f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2", 1, false, true},
	}
	conflicts0 := counterSum(t, q.Collector(), "conflict")
	attacker := conn(t, srv.ClientURL(), "attacker")
	forgedAt := time.Now()
	for _, f := range forgeries {
		e, _ := w.get(f.key)
		if e == nil {
			t.Fatalf("%s not in the registry before the forgery: %s", f.key, w)
		}
		b := rawWorker("gpu-node-1", e.WorkerID, f.instance, f.seq)
		msg := beatMsg("rbee.hb.worker.gpu-node-1."+e.WorkerID, wire.SchemaWorker, mustMarshal(t, b))
		if f.goodbye {
			msg.Header.Set(wire.HeaderEvent, wire.EventGoodbye)
		}
		publish(t, attacker, msg)
	}
	// The real worker's first beat written after the forgery: its own
	// instance, a seq of its own (not the forged 2^53), sent after the forgery.
	back := func(key string) (seen, bool) {
		for _, o := range w.ops(func(k string) bool { return k == key }) {
			if o.op == jetstream.KeyValuePut && o.instance == real[key] && o.seq < 1<<53 && o.sentAt.After(forgedAt) {
				return o, true
			}
		}
		return seen{}, false
	}
	for _, f := range forgeries {
		t.Run(f.key, func(t *testing.T) {
			var first seen
			testutil.Eventually(t, 4*ttl, func() bool {
				var ok bool
				first, ok = back(f.key)
				return ok
			}, "%s: after %s, the real worker is back in the registry: %s", f.key, f.what, w)
			// Its beats sent after one TTL are accepted: the first one back was sent
			// within one TTL and one interval (with the jitter) of the forgery.
			if lock := first.sentAt.Sub(forgedAt); lock > ttl+interval*3/2 {
				t.Errorf("%s: after %s the first real beat accepted was sent %s later: locked out longer than one TTL", f.key, f.what, lock)
			}
			if f.newInstance {
				testutil.Eventually(t, 5*time.Second, func() bool {
					return w.conflicted(f.key) || counterSum(t, q.Collector(), "conflict") > conflicts0
				}, "%s: the conflict after %s is reported on the entry or in the metrics: %s", f.key, f.what, w)
			}
		})
	}
}
