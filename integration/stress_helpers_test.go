package integration

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
)

// kvWatch records what any consumer of the workers bucket sees: per key the
// last operation and value, and every expiry (a purge marker after a put)
// and departure (a delete marker after a put) with the time it was seen. It
// follows the bucket with registry.KVWatch, so it sees through a broker
// restart and a cut longer than the markers live. Its methods may be called
// concurrently.
type kvWatch struct {
	mu       sync.Mutex
	op       map[string]jetstream.KeyValueOp
	entry    map[string]*wire.WorkerEntry
	putAt    map[string]time.Time
	expiries map[string][]time.Time
	leaves   map[string][]time.Time
	conflict map[string]bool
	log      []seen
	last     uint64
}

// seen is one operation as the watch saw it.
type seen struct {
	key    string
	op     jetstream.KeyValueOp
	at     time.Time // when the watch saw it
	sentAt time.Time // a put's sent_at_ms
	// A put's instance and seq:
	instance string
	seq      uint64
}

// watchWorkers watches rbee_workers on url (waiting for the server and the
// bucket) until cleanup.
func watchWorkers(t *testing.T, url string) *kvWatch {
	t.Helper()
	nc := testutil.Connect(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.RetryOnFailedConnect(true))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	w := &kvWatch{op: map[string]jetstream.KeyValueOp{}, entry: map[string]*wire.WorkerEntry{}, putAt: map[string]time.Time{},
		expiries: map[string][]time.Time{}, leaves: map[string][]time.Time{}, conflict: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	log := testutil.Logger(t)
	go func() { defer close(done); w.run(ctx, js, log) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// run follows the bucket with registry.KVWatch (resuming after a reconnect,
// re-listing after a gap) once the bucket exists.
func (w *kvWatch) run(ctx context.Context, js jetstream.JetStream, log *slog.Logger) {
	for {
		kw, err := registry.WatchKV(ctx, js, "rbee_workers", registry.KVWatchConfig{OnChange: w.apply, Logger: log})
		if err == nil {
			<-ctx.Done()
			kw.Stop()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (w *kvWatch) apply(e registry.Change) {
	now := time.Now()
	var v *wire.WorkerEntry
	if e.Op == jetstream.KeyValuePut {
		v, _ = wire.DecodeWorkerEntry(e.Value)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = max(w.last, e.Revision)
	k := e.Key
	rec := seen{key: k, op: e.Op, at: now}
	if v != nil {
		rec.sentAt, rec.instance, rec.seq = time.UnixMilli(v.SentAtMs), v.InstanceID, v.Seq
	}
	w.log = append(w.log, rec)
	switch e.Op {
	case jetstream.KeyValuePut:
		w.entry[k], w.putAt[k] = v, now
		if v != nil && v.Conflict {
			w.conflict[k] = true
		}
	case jetstream.KeyValuePurge:
		if w.op[k] == jetstream.KeyValuePut {
			w.expiries[k] = append(w.expiries[k], now)
		}
		delete(w.entry, k)
	case jetstream.KeyValueDelete:
		if w.op[k] == jetstream.KeyValuePut {
			w.leaves[k] = append(w.leaves[k], now)
		}
		delete(w.entry, k)
	}
	w.op[k] = e.Op
}

// expiredSince returns the keys matching match that expired at or after since.
func (w *kvWatch) expiredSince(match func(string) bool, since time.Time) []string {
	return w.expiredBetween(match, since, time.Unix(1<<40, 0))
}

// present returns how many keys matching match are present, and how many of
// them were written at or after since.
func (w *kvWatch) present(match func(string) bool, since time.Time) (present, fresh int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, e := range w.entry {
		if e != nil && match(k) {
			present++
			if !w.putAt[k].Before(since) {
				fresh++
			}
		}
	}
	return present, fresh
}

// String summarises the watch for failure messages.
func (w *kvWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var exp []string
	n := 0
	for k, ts := range w.expiries {
		n += len(ts)
		if len(exp) < 10 {
			exp = append(exp, fmt.Sprintf("%s×%d", k, len(ts)))
		}
	}
	sort.Strings(exp)
	return fmt.Sprintf("%d keys present, %d expiries (%s), %d keys left, revision %d", len(w.entry), n, strings.Join(exp, " "), len(w.leaves), w.last)
}

// hiveKeys matches the worker keys of one hive.
func hiveKeys(hive string) func(string) bool {
	return func(k string) bool { return strings.HasPrefix(k, hive+".") }
}

// window waits d: the length of a fault, or the time after it in which an
// expiry would show. It is the thing under test, not a stand-in for a condition.
func window(d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	<-tm.C
}

// queenTTLArgs returns the `rbee queen` flags for a TTL of missed beats of
// one second: --missed where the queen takes per-entry TTLs, else the
// bucket TTL flags.
func queenTTLArgs(t *testing.T, bin string, missed int) []string {
	t.Helper()
	help, _ := exec.Command(bin, "queen", "-h").CombinedOutput()
	if strings.Contains(string(help), "-missed") {
		return []string{"--missed", fmt.Sprint(missed)}
	}
	ttl := (time.Duration(missed) * time.Second).String()
	return []string{"--worker-ttl", ttl, "--hive-ttl", ttl}
}

// rawLoad publishes beats for n workers of hive, each once per second, from
// its own connection, until stopped; the first byes of them send a goodbye
// and stop when goodbye is called.
type rawLoad struct {
	nc       *nats.Conn
	hive     string
	n        int
	mu       sync.Mutex
	sent     uint64
	byes     int
	stopped  bool
	round    uint64 // seq of the round being sent
	instance string
}

func startRawLoad(t *testing.T, url, hive string, n int) *rawLoad {
	t.Helper()
	l := &rawLoad{nc: conn(t, url, "load-"+hive), hive: hive, n: n, instance: fmt.Sprintf("%032x", time.Now().UnixNano())}
	done := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for seq := uint64(1); ; seq++ {
			// Spread each round over the second, as independent senders would.
			for i := range n {
				l.mu.Lock()
				l.round = seq
				if !l.stopped && i >= l.byes && l.beat(i, seq, false) == nil {
					l.sent++
				}
				l.mu.Unlock()
				if i%50 == 49 {
					select {
					case <-stop:
						return
					case <-time.After(time.Second / time.Duration(max(1, n/50)+1)):
					}
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return l
}

func (l *rawLoad) beat(i int, seq uint64, goodbye bool) error {
	w := rawWorker(l.hive, fmt.Sprintf("w%d", i), l.instance[:24]+fmt.Sprintf("%08x", i), seq)
	data, err := wire.Marshal(w)
	if err != nil {
		return err
	}
	msg := beatMsg("rbee.hb.worker."+l.hive+"."+w.WorkerID, wire.SchemaWorker, data)
	if goodbye {
		msg.Header.Set(wire.HeaderEvent, wire.EventGoodbye)
	}
	return l.nc.PublishMsg(msg)
}
