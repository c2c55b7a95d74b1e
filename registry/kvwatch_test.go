package registry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rs/zerolog"
)

// markerTTL is the test buckets' marker lifetime: short, so that a cut can
// outlast it without the test waiting the production minute.
const markerTTL = time.Second

// TestWatchGapLongerThanMarkers: the watcher's connection is cut (a
// toxiproxy blackhole) for longer than the markers live. Meanwhile one entry
// expires (its purge marker ages out before the watch is back), one leaves
// (a delete marker, which stays) and one joins. When the connection returns
// the mirror holds exactly what the bucket holds: the expiry is reported as
// expired (found by the re-list), the goodbye as left, the newcomer joined.
func TestWatchGapLongerThanMarkers(t *testing.T) {
	srv := testutil.Server(t)
	admin := testutil.Connect(t, srv.ClientURL())
	ajs, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	kvs := map[string]jetstream.KeyValue{}
	for _, name := range []string{"rbee_workers", "rbee_hives"} {
		kv, err := ajs.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, History: 1, LimitMarkerTTL: markerTTL})
		if err != nil {
			t.Fatal(err)
		}
		kvs[name] = kv
	}
	wkv := kvs["rbee_workers"]
	revs := map[string]uint64{}
	for _, k := range []string{"h.stays", "h.expires", "h.leaves"} {
		if revs[k], err = wkv.Put(ctx, k, workerValue(t, "i-"+k, 1, "ready", "")); err != nil {
			t.Fatal(err)
		}
	}

	proxy, url := newProxy(t, srv.ClientURL())
	nc := testutil.Connect(t, url, nats.PingInterval(100*time.Millisecond), nats.MaxPingsOutstanding(2),
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w, err := registry.Watch(ctx, js, registry.Config{Scheme: subjects.Default(), OnEvent: rec.add, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := w.Sizes(); n != 3 {
		t.Fatalf("mirror holds %d workers, want 3", n)
	}

	restore := blackhole(t, proxy)
	checkFor(t, 10*time.Second, func() error {
		if s := nc.Status(); s == nats.CONNECTED {
			return fmt.Errorf("watcher's connection still %s", s)
		}
		return nil
	})
	// During the cut: h.expires gets a value with a one-second TTL, h.leaves
	// says goodbye, h.joins arrives.
	msg := nats.NewMsg("$KV.rbee_workers.h.expires")
	msg.Data = workerValue(t, "i-h.expires", 2, "ready", "")
	msg.Header.Set(jetstream.MsgTTLHeader, "1s")
	if _, err := ajs.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	if err := wkv.Delete(ctx, "h.leaves"); err != nil {
		t.Fatal(err)
	}
	if _, err := wkv.Put(ctx, "h.joins", workerValue(t, "i-h.joins", 1, "ready", "")); err != nil {
		t.Fatal(err)
	}
	// Hold the cut until the expiry's purge marker is gone from the stream.
	stream, err := ajs.Stream(ctx, "KV_rbee_workers")
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error {
		m, err := stream.GetLastMsgForSubject(ctx, "$KV.rbee_workers.h.expires")
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("h.expires still has seq %d (headers %v)", m.Sequence, m.Header)
	})
	restore()

	checkFor(t, 30*time.Second, func() error {
		var keys []string
		for _, e := range w.Workers() {
			keys = append(keys, e.HiveID+"."+e.WorkerID+"/"+e.InstanceID)
		}
		got := strings.Join(keys, " ")
		// workerValue names every worker h.w; the instance tells them apart.
		if want := "h.w/i-h.joins h.w/i-h.stays"; got != want {
			return fmt.Errorf("mirror %q, want %q; events %v %v %v", got, want,
				rec.types("h.expires"), rec.types("h.leaves"), rec.types("h.joins"))
		}
		return nil
	})
	// The unordered copy the fleet's /metrics aggregate holds the same entries.
	sorted, unordered := w.Workers(), w.WorkersAnyOrder()
	if len(unordered) != len(sorted) {
		t.Errorf("WorkersAnyOrder has %d entries, Workers %d", len(unordered), len(sorted))
	}
	for _, e := range sorted {
		if !slices.Contains(unordered, e) {
			t.Errorf("WorkersAnyOrder lacks %s.%s", e.HiveID, e.WorkerID)
		}
	}
	for key, want := range map[string]string{"h.expires": "expired", "h.leaves": "left", "h.joins": "joined", "h.stays": ""} {
		if got := strings.Join(rec.types(key), ","); got != want {
			t.Errorf("%s: events %q, want %q", key, got, want)
		}
	}
	if n := w.Relisted(); n != 1 {
		t.Errorf("Relisted %d, want 1 (h.expires)", n)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, ev := range rec.evs {
		if ev.Key == "h.expires" && (!ev.Relisted || ev.Worker == nil || ev.Worker.InstanceID != "i-h.expires" || ev.Revision != revs["h.expires"]) {
			t.Errorf("h.expires event %+v: want Relisted with the last entry seen and its revision %d", ev, revs["h.expires"])
		}
	}
}

// TestWatchBucketRecreated: while the watcher is cut off, the bucket is
// deleted and created again (as a server that lost its store would have
// it), so revisions start again from 1. The watch reads the new bucket whole
// instead of resuming after a revision the new stream has not reached.
func TestWatchBucketRecreated(t *testing.T) {
	srv := testutil.Server(t)
	ajs, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	cfg := func(name string) jetstream.KeyValueConfig {
		return jetstream.KeyValueConfig{Bucket: name, History: 1, LimitMarkerTTL: markerTTL}
	}
	wkv, err := ajs.CreateKeyValue(ctx, cfg("rbee_workers"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ajs.CreateKeyValue(ctx, cfg("rbee_hives")); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := wkv.Put(ctx, fmt.Sprintf("h.old%d", i), workerValue(t, fmt.Sprintf("i-old%d", i), 1, "ready", "")); err != nil {
			t.Fatal(err)
		}
	}
	proxy, url := newProxy(t, srv.ClientURL())
	nc := testutil.Connect(t, url, nats.PingInterval(100*time.Millisecond), nats.MaxPingsOutstanding(2),
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w, err := registry.Watch(ctx, js, registry.Config{Scheme: subjects.Default(), OnEvent: rec.add, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	restore := blackhole(t, proxy)
	checkFor(t, 10*time.Second, func() error {
		if s := nc.Status(); s == nats.CONNECTED {
			return fmt.Errorf("watcher's connection still %s", s)
		}
		return nil
	})
	if err := ajs.DeleteKeyValue(ctx, "rbee_workers"); err != nil {
		t.Fatal(err)
	}
	if wkv, err = ajs.CreateKeyValue(ctx, cfg("rbee_workers")); err != nil {
		t.Fatal(err)
	}
	// h.old0 comes back at revision 1 under a new instance; h.new at 2.
	if _, err := wkv.Put(ctx, "h.old0", workerValue(t, "i-back", 1, "ready", "")); err != nil {
		t.Fatal(err)
	}
	if _, err := wkv.Put(ctx, "h.new", workerValue(t, "i-new", 1, "ready", "")); err != nil {
		t.Fatal(err)
	}
	restore()
	checkFor(t, 30*time.Second, func() error {
		var got []string
		for _, e := range w.Workers() {
			got = append(got, e.InstanceID)
		}
		if s := strings.Join(got, " "); s != "i-new i-back" {
			return fmt.Errorf("mirror holds %q, want \"i-new i-back\" (h.new, h.old0)", s)
		}
		return nil
	})
	for key, want := range map[string]string{"h.old0": "restarted", "h.new": "joined", "h.old1": "expired", "h.old4": "expired"} {
		if got := strings.Join(rec.types(key), ","); got != want {
			t.Errorf("%s: events %q, want %q", key, got, want)
		}
	}
}

// TestWatchKVNeedsOnChange: a watch without a callback is refused.
func TestWatchKVNeedsOnChange(t *testing.T) {
	js, _, _ := buckets(t)
	if _, err := registry.WatchKV(t.Context(), js, "rbee_workers", registry.KVWatchConfig{}); !errors.Is(err, registry.ErrNoOnChange) {
		t.Fatalf("err %v, want ErrNoOnChange", err)
	}
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

// blackhole drops everything through p in both directions (toxiproxy's
// timeout toxic with timeout 0) until the returned function is called.
func blackhole(t *testing.T, p *toxiproxy.Proxy) (restore func()) {
	t.Helper()
	for _, dir := range []string{"upstream", "downstream"} {
		js := fmt.Sprintf(`{"name":"blackhole_%s","type":"timeout","stream":"%s","attributes":{"timeout":0}}`, dir, dir)
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			t.Fatalf("add toxic %s: %v", js, err)
		}
	}
	return func() {
		for _, dir := range []string{"upstream", "downstream"} {
			if err := p.Toxics.RemoveToxic(context.Background(), "blackhole_"+dir); err != nil {
				t.Errorf("remove toxic: %v", err)
			}
		}
	}
}

// TestKVWatchConcurrentUse: a KVWatch's methods may be called from several
// goroutines while it delivers, and Stop twice is safe. Values present at the
// start arrive as Initial, before Ready; later ones after it.
func TestKVWatchConcurrentUse(t *testing.T) {
	js, wkv, _ := buckets(t)
	ctx := t.Context()
	if _, err := wkv.Put(ctx, "h.a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		changes []registry.Change
	)
	w, err := registry.WatchKV(ctx, js, "rbee_workers", registry.KVWatchConfig{OnChange: func(c registry.Change) {
		mu.Lock()
		changes = append(changes, c)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	<-w.Ready()
	mu.Lock()
	if len(changes) != 1 || !changes[0].Initial || changes[0].Key != "h.a" {
		t.Fatalf("initial changes %+v, want h.a as Initial", changes)
	}
	mu.Unlock()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				_, _ = w.Relists(), w.Relisted()
				<-w.Ready()
			}
		}()
	}
	for i := range 50 {
		if _, err := wkv.Put(ctx, fmt.Sprintf("h.b%d", i), []byte("2")); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(changes) != 51 {
			return fmt.Errorf("%d changes, want 51", len(changes))
		}
		for _, c := range changes[1:] {
			if c.Initial || c.Op != jetstream.KeyValuePut {
				return fmt.Errorf("change %+v after Ready", c)
			}
		}
		return nil
	})
	wg.Add(2)
	go func() { defer wg.Done(); w.Stop() }()
	go func() { defer wg.Done(); w.Stop() }()
	wg.Wait()
	w.Stop()
}
