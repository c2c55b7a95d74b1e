package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
)

// startCluster starts n embedded servers with JetStream, routed to each other
// on loopback, each with its own name and store, and waits until the
// JetStream meta group has a leader and every server is current.
func startCluster(t *testing.T, n int) map[string]*embedded.Server {
	t.Helper()
	ports := testutil.FreePorts(t, n)
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	servers := map[string]*embedded.Server{}
	for i, p := range ports {
		c := embedded.DefaultConfig(t.TempDir())
		c.Port = -1
		c.ServerName = fmt.Sprintf("n%d", i+1)
		c.ClusterName = "rbee-test"
		c.Cluster = fmt.Sprintf("127.0.0.1:%d", p)
		c.Routes = append(append([]string{}, routes[:i]...), routes[i+1:]...)
		c.Logger = testutil.Logger(t)
		s, err := embedded.New(c)
		if err != nil {
			t.Fatalf("server %s: %v", c.ServerName, err)
		}
		t.Cleanup(s.Shutdown)
		servers[c.ServerName] = s
	}
	testutil.Eventually(t, 30*time.Second, func() bool {
		var leader *embedded.Server
		for _, s := range servers {
			ns := s.NATS()
			if ns.NumRoutes() < n-1 || !ns.JetStreamIsCurrent() {
				return false
			}
			if ns.JetStreamIsLeader() {
				leader = s
			}
		}
		// The meta leader lists the peers it has current stats from.
		return leader != nil && len(leader.NATS().JetStreamClusterPeers()) == n
	}, "JetStream cluster of %d forms", n)
	return servers
}

// clientURLs returns the servers' client URLs as one comma-separated list.
func clientURLs(servers map[string]*embedded.Server) string {
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.ClientURL())
	}
	return strings.Join(urls, ",")
}

// startQueenConfig starts a queen with cfg on url and records its events.
func startQueenConfig(t *testing.T, url string, cfg queen.Config) (*queen.Queen, *events) {
	t.Helper()
	ev := &events{}
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

// streamCluster returns the leader of a bucket's stream and how many of its
// replicas are current.
func streamCluster(js jetstream.JetStream, bucket string) (leader string, current int) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return "", 0
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return "", 0
	}
	for _, r := range info.Cluster.Replicas {
		if r.Current {
			current++
		}
	}
	return info.Cluster.Leader, current
}

// TestClusterFailover runs the registry on a 3-server cluster with
// 3-replica buckets, every client holding the list of all three URLs, and
// stops the server leading the worker bucket's stream: beats keep flowing
// through a new leader, every live entry stays without a false expiry, and
// expiry still works afterwards.
func TestClusterFailover(t *testing.T) {
	const (
		interval = 500 * time.Millisecond
		// Longer than the time the stream group needs to elect a new leader
		// after losing its leader without a hand-over (raft election
		// timeouts of 4-9 s), so that live entries cannot age out meanwhile.
		ttl = 15 * time.Second
	)
	servers := startCluster(t, 3)
	urls := clientURLs(servers)

	qc := queen.DefaultConfig()
	qc.Replicas = 3
	qc.Missed = int(ttl / interval) // entries live 15 s
	q, ev := startQueenConfig(t, urls, qc)

	hc := hive.DefaultConfig("hive-1")
	hc.Interval, hc.WorkerTTL, hc.Version = interval, ttl, "test"
	h, err := hive.New(conn(t, urls, "hive"), hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
	live := []string{"hive-1.w1", "hive-1.w2", "hive-1.w3"}
	for _, k := range live {
		startWorker(t, conn(t, urls, k), "hive-1", strings.TrimPrefix(k, "hive-1."), interval)
	}
	doomed := startWorker(t, conn(t, urls, "doomed"), "hive-1", "doomed", interval)
	testutil.Eventually(t, 15*time.Second, func() bool {
		for _, k := range append(live, "hive-1.doomed", "hive-1") {
			if _, ok := ev.find(registry.Joined, k); !ok {
				return false
			}
		}
		return true
	}, "every sender joined")

	js, err := jetstream.New(testutil.Connect(t, urls))
	if err != nil {
		t.Fatal(err)
	}
	var leader string
	testutil.Eventually(t, 15*time.Second, func() bool {
		var current int
		leader, current = streamCluster(js, "rbee_workers")
		hl, hc := streamCluster(js, "rbee_hives")
		return leader != "" && current == 2 && hl != "" && hc == 2
	}, "both buckets have a leader and two current followers (3 replicas)")
	wkv, _ := kvs(t, urls)
	before := map[string]uint64{}
	for _, k := range live {
		before[k] = getWorker(wkv, k).Seq
	}

	servers[leader].Shutdown()
	killed := time.Now()
	delete(servers, leader)
	var newLeader string
	testutil.Eventually(t, 30*time.Second, func() bool {
		newLeader, _ = streamCluster(js, "rbee_workers")
		return newLeader != "" && newLeader != leader
	}, "a new leader for KV_rbee_workers")
	elected := time.Since(killed)
	testutil.Eventually(t, ttl, func() bool {
		for _, k := range live {
			if e := getWorker(wkv, k); e == nil || e.Seq <= before[k] {
				return false
			}
		}
		return true
	}, "beats are written again after the failover")
	flowing := time.Since(killed)

	// The doomed worker stops after the failover; its expiry comes at least a
	// TTL after the stop, so by then any entry last written before the kill
	// would have expired too if it were going to.
	doomed.Abandon()
	testutil.Eventually(t, ttl+15*time.Second, func() bool {
		_, ok := ev.find(registry.Expired, "hive-1.doomed")
		return ok
	}, "expiry works after the failover")
	expiredAfter := time.Since(killed)

	for _, k := range append(live, "hive-1") {
		if n := ev.count(registry.Expired, k); n != 0 {
			t.Errorf("live %s falsely expired %d times", k, n)
		}
	}
	got := keys(t, wkv)
	for _, k := range live {
		if !got[k] {
			t.Errorf("live %s missing from rbee_workers after the failover", k)
		}
		if e := getWorker(wkv, k); e == nil || e.Seq < before[k]+uint64(ttl/interval)/2 {
			t.Errorf("%s beats stalled after the failover: %+v", k, e)
		}
	}
	if nw, nh := q.Registry().Sizes(); nw != len(live) || nh != 1 {
		t.Errorf("queen's registry holds %d workers and %d hives, want %d and 1", nw, nh, len(live))
	}
	t.Logf("stopped %s (leader of KV_rbee_workers); %s leads after %s; beats written again after %s; %d live workers and the hive kept with no expiry; the worker stopped after the failover expired %s after the kill (TTL %s)",
		leader, newLeader, elected.Round(time.Millisecond), flowing.Round(time.Millisecond), len(live), expiredAfter.Round(time.Millisecond), ttl)
}
