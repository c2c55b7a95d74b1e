package embedded

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestAdvisorySubjects(t *testing.T) {
	c, d := AdvisorySubjects("RBEE")
	if c != "$SYS.ACCOUNT.RBEE.CONNECT" || d != "$SYS.ACCOUNT.RBEE.DISCONNECT" {
		t.Fatalf("AdvisorySubjects = %q, %q", c, d)
	}
}

// An ordinary client without credentials sees its own account's connect and
// disconnect advisories, and their server.id/client.id match what the other
// client's nats.go reports.
func TestAdvisoriesForAnonymousClients(t *testing.T) {
	s := startServer(t, testConfig(t))
	sub := connect(t, s.ClientURL())
	acc, err := ClientAccount(context.Background(), sub)
	if err != nil || acc != Account {
		t.Fatalf("ClientAccount = %q, %v; want %q", acc, err, Account)
	}
	adv := watchAdvisories(t, sub, acc)

	nc, err := nats.Connect(s.ClientURL(), nats.Name("worker"))
	if err != nil {
		t.Fatal(err)
	}
	id := ConnID(nc)
	if id == "" || !strings.HasPrefix(id, s.NATS().ID()+"/") {
		t.Fatalf("ConnID = %q, server id %s", id, s.NATS().ID())
	}
	checkFor(t, 5*time.Second, func() error { _, err := adv.find(ConnectAdvisoryType, id); return err })
	nc.Close()
	checkFor(t, 5*time.Second, func() error { _, err := adv.find(DisconnectAdvisoryType, id); return err })
	a, _ := adv.find(DisconnectAdvisoryType, id)
	if a.Client.Name != "worker" || a.Client.Account != Account {
		t.Fatalf("disconnect advisory %+v", a)
	}
}

// A wildcard subscription over every account's DISCONNECT (as a queen that
// does not know its account makes) gets its own account's through the
// import, in a queue group too.
func TestAdvisoriesForWildcardQueueSubscription(t *testing.T) {
	s := startServer(t, testConfig(t))
	sub := connect(t, s.ClientURL())
	got := make(chan ConnAdvisory, 16)
	if _, err := sub.QueueSubscribe("$SYS.ACCOUNT.*.DISCONNECT", "rbee-queen", func(m *nats.Msg) {
		if a, err := ParseConnAdvisory(m.Data); err == nil {
			got <- a
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := connect(t, s.ClientURL())
	id := ConnID(nc)
	nc.Close()
	var seen []string
	checkFor(t, 5*time.Second, func() error {
		select {
		case a := <-got:
			if a.ConnID() == id {
				return nil
			}
			seen = append(seen, a.ConnID())
		default:
		}
		return fmt.Errorf("no DISCONNECT for %s; seen %q", id, seen)
	})
}

// A client that completes CONNECT and then neither reads nor writes (a frozen
// process) is dropped by the server's pings and reported disconnected.
func TestAdvisoryForFrozenClient(t *testing.T) {
	c := testConfig(t)
	c.PingInterval, c.MaxPingsOut = 200*time.Millisecond, 2
	s := startServer(t, c)
	adv := watchAdvisories(t, connect(t, s.ClientURL()), Account)

	_, info := rawClient(t, s)
	id := info.id
	checkFor(t, 5*time.Second, func() error { _, err := adv.find(ConnectAdvisoryType, id); return err })
	// From here on the client reads and answers nothing.
	checkFor(t, 10*time.Second, func() error { _, err := adv.find(DisconnectAdvisoryType, id); return err })
	a, _ := adv.find(DisconnectAdvisoryType, id)
	if a.Reason != server.StaleConnection.String() {
		t.Fatalf("reason %q, want %q", a.Reason, server.StaleConnection.String())
	}
}

// In a cluster of three, a client closing on one server is reported to a
// subscriber connected to another.
func TestAdvisoriesAcrossCluster(t *testing.T) {
	servers := startCluster(t)
	adv := watchAdvisories(t, connect(t, servers[0].ClientURL()), Account)
	id := waitAdvisoryPath(t, adv, servers[2])
	checkFor(t, 5*time.Second, func() error { _, err := adv.find(DisconnectAdvisoryType, id); return err })
	if !strings.HasPrefix(id, servers[2].NATS().ID()+"/") {
		t.Fatalf("conn %s is not on the far server %s", id, servers[2].NATS().ID())
	}
}

// waitAdvisoryPath returns once a connect advisory from far has reached adv:
// interest crosses the routes asynchronously, so it reconnects until one
// arrives. It returns the connection ID of that (closed) probe.
func waitAdvisoryPath(t *testing.T, adv *advisories, far *Server) string {
	t.Helper()
	var id string
	checkFor(t, 10*time.Second, func() error {
		nc, err := nats.Connect(far.ClientURL(), nats.NoReconnect())
		if err != nil {
			return err
		}
		defer nc.Close()
		id = ConnID(nc)
		if _, err := adv.find(ConnectAdvisoryType, id); err != nil {
			time.Sleep(100 * time.Millisecond) // give the advisory a moment before the next connection
			_, err = adv.find(ConnectAdvisoryType, id)
			return err
		}
		return nil
	})
	return id
}

// startCluster starts three servers routed to each other on loopback and
// waits until every one has its two routes.
func startCluster(t testing.TB) []*Server {
	t.Helper()
	ports := freePorts(t, 3)
	var servers []*Server
	for i, p := range ports {
		c := testConfig(t)
		c.ServerName = fmt.Sprintf("s%d", i)
		c.Cluster, c.ClusterName = fmt.Sprintf("127.0.0.1:%d", p), "rbee"
		for j, q := range ports {
			if j != i {
				c.Routes = append(c.Routes, fmt.Sprintf("nats-route://127.0.0.1:%d", q))
			}
		}
		servers = append(servers, startServer(t, c))
	}
	checkFor(t, 20*time.Second, func() error {
		for _, s := range servers {
			if n := s.NATS().NumRoutes(); n < 2 {
				return fmt.Errorf("%s has %d routes", s.NATS().Name(), n)
			}
		}
		return nil
	})
	return servers
}

// A server lost from the cluster sends no DISCONNECT for its clients: they
// reconnect to another server (a CONNECT from there) and no advisory says
// their old connection closed.
func TestAdvisoriesServerLoss(t *testing.T) {
	servers := startCluster(t)
	adv := watchAdvisories(t, connect(t, servers[0].ClientURL()), Account)
	waitAdvisoryPath(t, adv, servers[2])
	waitAdvisoryPath(t, adv, servers[1])
	urls := servers[2].ClientURL() + "," + servers[1].ClientURL()
	nc := connect(t, urls, nats.DontRandomize(), nats.ReconnectWait(50*time.Millisecond))
	old := ConnID(nc)
	if !strings.HasPrefix(old, servers[2].NATS().ID()+"/") {
		t.Fatalf("conn %s not on %s", old, servers[2].NATS().ID())
	}
	checkFor(t, 10*time.Second, func() error { _, err := adv.find(ConnectAdvisoryType, old); return err })
	servers[2].Shutdown()
	var now string
	checkFor(t, 10*time.Second, func() error {
		now = ConnID(nc)
		if now == "" || now == old {
			return fmt.Errorf("not reconnected: %q", now)
		}
		_, err := adv.find(ConnectAdvisoryType, now)
		return err
	})
	if a, err := adv.find(DisconnectAdvisoryType, old); err == nil {
		t.Fatalf("the lost server's client was reported disconnected: %+v", a)
	}
}

// A data directory written by a server without accounts (earlier versions)
// keeps its buckets: the embedded broker's clients stay in the global account.
func TestAdvisoriesKeepOldBuckets(t *testing.T) {
	dir := t.TempDir()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true}
	old, err := Start(opts, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc := connect(t, old.ClientURL())
	js, _ := jetstream.New(nc)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "rbee_workers"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "hive-1.w1", []byte("v")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	old.Shutdown()

	c := testConfig(t)
	c.StoreDir = dir
	s := startServer(t, c)
	nc = connect(t, s.ClientURL())
	js, _ = jetstream.New(nc)
	kv, err = js.KeyValue(ctx, "rbee_workers")
	if err != nil {
		t.Fatalf("old bucket after the restart: %v", err)
	}
	if e, err := kv.Get(ctx, "hive-1.w1"); err != nil || string(e.Value()) != "v" {
		t.Fatalf("old entry: %v, %v", e, err)
	}
	watchAdvisories(t, nc, Account) // and the advisories are there too
}

// A configuration file with users but no accounts still gets the advisories;
// one with accounts of its own is left alone, and the import docs/security.md gives
// works there.
func TestAdvisoriesWithConfigFile(t *testing.T) {
	t.Run("users in the global account", func(t *testing.T) {
		conf := writeConf(t, `authorization { users: [{user: q, password: secret}] }`)
		c := testConfig(t)
		c.ConfigFile = conf
		s := startServer(t, c)
		adv := watchAdvisories(t, connect(t, s.ClientURL(), nats.UserInfo("q", "secret")), Account)
		nc := connect(t, s.ClientURL(), nats.UserInfo("q", "secret"))
		id := ConnID(nc)
		nc.Close()
		checkFor(t, 5*time.Second, func() error { _, err := adv.find(DisconnectAdvisoryType, id); return err })
	})
	t.Run("accounts of its own", func(t *testing.T) {
		conf := writeConf(t, readmeSnippet(t)+"\nno_auth_user: queen\n")
		c := testConfig(t)
		c.ConfigFile = conf
		opts, err := c.Options()
		if err != nil {
			t.Fatal(err)
		}
		if opts.SystemAccount != "SYS" {
			t.Fatalf("system account %q: the file's own was replaced", opts.SystemAccount)
		}
		s := startServer(t, c)
		sub := connect(t, s.ClientURL())
		acc, err := ClientAccount(context.Background(), sub)
		if err != nil || acc != "RBEE" {
			t.Fatalf("ClientAccount = %q, %v", acc, err)
		}
		adv := watchAdvisories(t, sub, acc)
		nc := connect(t, s.ClientURL())
		id := ConnID(nc)
		nc.Close()
		checkFor(t, 5*time.Second, func() error { _, err := adv.find(DisconnectAdvisoryType, id); return err })
		// JetStream works in the application account.
		js, _ := jetstream.New(sub)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "rbee_workers"}); err != nil {
			t.Fatal(err)
		}
	})
}

// readmeSnippet returns the external-server configuration docs/security.md gives
// (the first fenced block after "Connection advisories").
func readmeSnippet(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "**Connection advisories.**")
	if ok {
		_, rest, ok = strings.Cut(rest, "```\n")
	}
	snippet, _, found := strings.Cut(rest, "```")
	if !ok || !found {
		t.Fatal("docs/security.md has no advisory configuration block")
	}
	return snippet
}

func writeConf(t testing.TB, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "server.conf")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// rawInfo is what a raw client learnt from the server's INFO.
type rawInfo struct {
	id string // "<server_id>/<client_id>"
	r  *bufio.Reader
}

// rawClient connects over plain TCP, sends CONNECT and waits for the PONG:
// a client whose reading and writing the test controls.
func rawClient(t testing.TB, s *Server) (net.Conn, rawInfo) {
	t.Helper()
	raw, err := net.Dial("tcp", s.NATS().Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close() })
	r := bufio.NewReader(raw)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "INFO ") {
		t.Fatalf("INFO: %q, %v", line, err)
	}
	var info struct {
		ServerID string `json:"server_id"`
		ClientID uint64 `json:"client_id"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimSpace(line), "INFO ")), &info); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprint(raw, "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"raw\"}\r\nPING\r\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != "PONG" {
		t.Fatalf("PONG: %q, %v", line, err)
	}
	return raw, rawInfo{id: fmt.Sprintf("%s/%d", info.ServerID, info.ClientID), r: r}
}

// AdvisoriesReachable tells a server that sends a client its advisories from
// one that does not (a configuration file with accounts but no import).
func TestAdvisoriesReachable(t *testing.T) {
	s := startServer(t, testConfig(t))
	nc := connect(t, s.ClientURL())
	dial := func() (*nats.Conn, error) { return nats.Connect(s.ClientURL()) }
	if err := AdvisoriesReachable(context.Background(), nc, Account, dial); err != nil {
		t.Fatalf("embedded broker: %v", err)
	}

	c := testConfig(t)
	c.ConfigFile = writeConf(t, `
accounts { RBEE: { jetstream: enabled, users: [{user: anon}] } }
no_auth_user: anon
`)
	bare := startServer(t, c)
	nc = connect(t, bare.ClientURL())
	acc, err := ClientAccount(context.Background(), nc)
	if err != nil || acc != "RBEE" {
		t.Fatalf("ClientAccount = %q, %v", acc, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	dial = func() (*nats.Conn, error) { return nats.Connect(bare.ClientURL()) }
	if err := AdvisoriesReachable(ctx, nc, acc, dial); !errors.Is(err, ErrNoAdvisories) {
		t.Fatalf("server without the import: %v, want ErrNoAdvisories", err)
	}
}
