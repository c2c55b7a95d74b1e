package integration

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
	"github.com/rs/zerolog"
)

// kvWatch records what any consumer of the workers bucket sees: per key the
// last operation and value, and every expiry (a purge marker after a put)
// and departure (a delete marker after a put) with the time it was seen. It
// resumes at the next revision after a reconnect, so it sees through a
// broker restart. Its methods may be called concurrently.
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
	go func() { defer close(done); w.run(ctx, nc, js) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func (w *kvWatch) run(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) {
	reconnected := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(reconnected)
	var (
		kw      jetstream.KeyWatcher
		updates <-chan jetstream.KeyValueEntry
		retry   = time.After(0)
	)
	defer func() {
		if kw != nil {
			_ = kw.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
			retry = time.After(0)
		case <-retry:
			retry = nil
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			kv, err := js.KeyValue(wctx, "rbee_workers")
			cancel()
			if err != nil {
				retry = time.After(50 * time.Millisecond)
				continue
			}
			var opts []jetstream.WatchOpt
			w.mu.Lock()
			if w.last > 0 {
				opts = append(opts, jetstream.ResumeFromRevision(w.last+1))
			}
			w.mu.Unlock()
			nkw, err := kv.WatchAll(ctx, opts...)
			if err != nil {
				retry = time.After(50 * time.Millisecond)
				continue
			}
			if kw != nil {
				_ = kw.Stop()
			}
			kw, updates = nkw, nkw.Updates()
		case e, ok := <-updates:
			if !ok {
				updates, retry = nil, time.After(50*time.Millisecond)
				continue
			}
			if e != nil {
				w.apply(e)
			}
		}
	}
}

func (w *kvWatch) apply(e jetstream.KeyValueEntry) {
	now := time.Now()
	var v *wire.WorkerEntry
	if e.Operation() == jetstream.KeyValuePut {
		v, _ = wire.DecodeWorkerEntry(e.Value())
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if e.Revision() <= w.last {
		return // delivered again by a replacement watch
	}
	w.last = e.Revision()
	k := e.Key()
	rec := seen{key: k, op: e.Operation(), at: now}
	if v != nil {
		rec.sentAt, rec.instance, rec.seq = time.UnixMilli(v.SentAtMs), v.InstanceID, v.Seq
	}
	w.log = append(w.log, rec)
	switch e.Operation() {
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
	w.op[k] = e.Operation()
}

// expiredSince returns the keys matching match that expired at or after since.
func (w *kvWatch) expiredSince(match func(string) bool, since time.Time) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for k, ts := range w.expiries {
		if !match(k) {
			continue
		}
		for _, at := range ts {
			if !at.Before(since) {
				out = append(out, k)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// expiredBetween returns the keys matching match that expired in [from, to).
func (w *kvWatch) expiredBetween(match func(string) bool, from, to time.Time) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for k, ts := range w.expiries {
		if !match(k) {
			continue
		}
		for _, at := range ts {
			if !at.Before(from) && at.Before(to) {
				out = append(out, k)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// ops returns every operation seen on the keys matching match, in order.
func (w *kvWatch) ops(match func(string) bool) []seen {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []seen
	for _, s := range w.log {
		if match(s.key) {
			out = append(out, s)
		}
	}
	return out
}

// left reports whether key got a delete marker after a put, and expired whether it got a purge.
func (w *kvWatch) left(key string) (left, expired bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.leaves[key]) > 0, len(w.expiries[key]) > 0
}

// get returns key's value if it is present.
func (w *kvWatch) get(key string) (*wire.WorkerEntry, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.entry[key], w.putAt[key]
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

// conflicted reports whether key's value ever carried conflict: true.
func (w *kvWatch) conflicted(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conflict[key]
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

// newProxy starts a toxiproxy proxy (the Go library) in front of a NATS
// server's client URL and returns it with its own URL.
func newProxy(t *testing.T, serverURL string) (*toxiproxy.Proxy, string) {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, t.Name(), "127.0.0.1:0", strings.TrimPrefix(serverURL, "nats://"))
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p, "nats://" + p.Listen
}

// addToxic adds a toxic given as toxiproxy's JSON.
func addToxic(t *testing.T, p *toxiproxy.Proxy, js string) {
	t.Helper()
	if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatalf("add toxic %s: %v", js, err)
	}
}

// blackhole drops everything through p in both directions (toxiproxy's
// timeout toxic with timeout 0) until the returned function is called.
func blackhole(t *testing.T, p *toxiproxy.Proxy) (restore func()) {
	t.Helper()
	for _, dir := range []string{"upstream", "downstream"} {
		addToxic(t, p, fmt.Sprintf(`{"name":"blackhole_%s","type":"timeout","stream":"%s","attributes":{"timeout":0}}`, dir, dir))
	}
	return func() {
		for _, dir := range []string{"upstream", "downstream"} {
			if err := p.Toxics.RemoveToxic(context.Background(), "blackhole_"+dir); err != nil {
				t.Errorf("remove toxic: %v", err)
			}
		}
	}
}

// window waits d: the length of a fault, or the time after it in which an
// expiry would show. It is the thing under test, not a stand-in for a condition.
func window(d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	<-tm.C
}

// counterSum gathers c and sums the samples of the metrics whose name
// contains sub, and whose labels include every name=value in labels.
func counterSum(t *testing.T, c prometheus.Collector, sub string, labels ...string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if !strings.Contains(mf.GetName(), sub) {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, l := range labels {
				name, val, _ := strings.Cut(l, "=")
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == name && lp.GetValue() == val {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
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
	stopAt   time.Time
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

func (l *rawLoad) key(i int) string { return fmt.Sprintf("%s.w%d", l.hive, i) }

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

// goodbye makes the first n workers send a goodbye (the next seq of each)
// and stop beating.
func (l *rawLoad) goodbye(t *testing.T, n int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byes = n
	for i := range n {
		if err := l.beat(i, l.round+1, true); err != nil {
			t.Fatal(err)
		}
		l.sent++
	}
	if err := l.nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// stop ends the beating and returns how many beats were sent and when it stopped.
func (l *rawLoad) stop() (uint64, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.stopped, l.stopAt = true, time.Now()
	}
	_ = l.nc.Flush()
	return l.sent, l.stopAt
}

// startProcess is startKillable with the command, to signal it (SIGSTOP,
// SIGCONT); it is killed at cleanup.
func startProcess(t *testing.T, name string, args ...string) (*lines, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(name, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	out := &lines{}
	done := make(chan struct{})
	go func() { out.read(pr); close(done) }()
	go func() { _ = cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-done
	})
	return out, cmd
}

// subscribedAs reports whether a client named name holds a subscription to subject on srv.
func subscribedAs(srv *embedded.Server, name, subject string) bool {
	cz, err := srv.NATS().Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		return false
	}
	for _, c := range cz.Conns {
		if c.Name == name && slices.Contains(c.Subs, subject) {
			return true
		}
	}
	return false
}
