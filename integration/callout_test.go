package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/auth"
	"github.com/rbee/heartbeat/embedded"
	rbevents "github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/token"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// calloutSystem is a queen on an embedded broker that admits only tokens
// through the queen's auth callout, as `rbee queen --listen 0.0.0.0:4222`
// runs (here on loopback with Auth, which turns on the same).
type calloutSystem struct {
	srv    *embedded.Server
	url    string
	secret token.Secret
	svc    *auth.Service
	q      *queen.Queen
	qnc    *nats.Conn
	js     jetstream.JetStream // the queen's
}

func newSecret(t *testing.T) token.Secret {
	t.Helper()
	s, err := token.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startCalloutServer starts an embedded broker whose callout trusts secret.
// cluster and routes may be empty.
func startCalloutServer(t *testing.T, secret token.Secret, name, cluster string, routes ...string) *embedded.Server {
	t.Helper()
	b, err := auth.Broker(secret)
	if err != nil {
		t.Fatal(err)
	}
	sc := embedded.DefaultConfig(t.TempDir())
	sc.Port, sc.Logger, sc.Auth, sc.ServerName = -1, testutil.Logger(t), true, name
	sc.Callout = &embedded.Callout{Issuer: b.Issuer, User: b.User, Password: b.Password}
	if cluster != "" {
		sc.Cluster, sc.ClusterName, sc.Routes = cluster, "rbee", routes
	}
	srv, err := embedded.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// startCalloutQueen runs a queen and its auth service on srv, connected as
// the queens' user.
func startCalloutQueen(t *testing.T, srv *embedded.Server, secret token.Secret, replicas int) *calloutSystem {
	t.Helper()
	b, _ := auth.Broker(secret)
	s := &calloutSystem{srv: srv, url: srv.ClientURL(), secret: secret}
	var qerrs *asyncErrs
	s.qnc, qerrs = secureConn(t, s.url, "rbee-queen", natsconn.Config{User: b.User, Password: b.Password})
	t.Cleanup(func() {
		if errs := qerrs.list(); len(errs) != 0 {
			t.Errorf("the queen's connection hit errors: %v", errs)
		}
	})
	ac := auth.DefaultConfig(secret)
	ac.Logger, ac.Replicas = testutil.Logger(t), replicas
	ac.Kick = func(_ context.Context, match func(string) bool) (int, error) { return srv.Kick(match), nil }
	var err error
	if s.svc, err = auth.New(s.qnc, ac); err != nil {
		t.Fatal(err)
	}
	if err := s.svc.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.svc.Stop)
	qc := queen.DefaultConfig()
	qc.Logger, qc.Replicas = testutil.Logger(t), replicas
	if s.q, err = queen.New(s.qnc, qc); err != nil {
		t.Fatal(err)
	}
	if err := s.q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		s.q.Stop(ctx)
	})
	if s.js, err = jetstream.New(s.qnc); err != nil {
		t.Fatal(err)
	}
	return s
}

// agentConn connects with tok as an agent would (natsconn, the token as
// auth token) and records its asynchronous errors.
func agentConn(t *testing.T, url, name, tok string) (*nats.Conn, *asyncErrs) {
	t.Helper()
	return secureConn(t, url, name, natsconn.Config{Token: tok})
}

// refusedConnect asserts that a connection with tok is refused and returns
// the error.
func refusedConnect(t *testing.T, url, tok string) error {
	t.Helper()
	nc, err := natsconn.Connect(natsconn.Config{URL: url, Name: "attacker", Token: tok, ConnectTimeout: 5 * time.Second})
	if err == nil {
		nc.Close()
		t.Fatal("a connection with a bad token was admitted")
	}
	return err
}

func hiveToken(t *testing.T, s token.Secret, hiveID string) string {
	t.Helper()
	tok, err := s.Hive(hiveID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func deriveToken(t *testing.T, hiveTok, workerID string) string {
	t.Helper()
	tok, err := token.Derive(hiveTok, workerID)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestCalloutAttacks: on the embedded broker beyond loopback, every role
// works with its token alone; a compromised worker, hive and viewer each try
// what the issue lists, and every attempt is refused by the server, counted
// by it (rbee_broker_permission_violations_total) and seen at the attacker's
// error handler, while the registry and the event stream stay as they were.
func TestCalloutAttacks(t *testing.T) {
	secret := newSecret(t)
	s := startCalloutQueen(t, startCalloutServer(t, secret, "a", ""), secret, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := rbevents.EnsureStream(ctx, s.js, subjects.Default(), rbevents.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	h1 := hiveToken(t, secret, "hive-1")
	h2 := hiveToken(t, secret, "hive-2")

	hnc, herrs := agentConn(t, s.url, "hive-1", h1)
	hc := hive.DefaultConfig("hive-1")
	hc.Interval, hc.WorkerTTL, hc.Version = 20*time.Second, time.Minute, "test"
	h, err := hive.New(hnc, hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
	_, h2errs := agentConn(t, s.url, "hive-2", h2)
	startQuietWorker := func(nc *nats.Conn, hiveID, workerID string) {
		wc := worker.DefaultConfig(hiveID, workerID)
		wc.Interval = 20 * time.Second // a beat at start, then quiet: entries stay put
		w, err := worker.New(nc, wc)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Abandon)
	}
	w2nc, w2errs := agentConn(t, s.url, "w2", deriveToken(t, h1, "w2"))
	startQuietWorker(w2nc, "hive-1", "w2")
	ow, owerrs := agentConn(t, s.url, "hive-2.w1", deriveToken(t, h2, "w1"))
	startQuietWorker(ow, "hive-2", "w1")
	w1nc, w1errs := agentConn(t, s.url, "w1", deriveToken(t, h1, "w1"))
	startQuietWorker(w1nc, "hive-1", "w1")
	v, _ := secret.Viewer("grafana", time.Now())
	vnc, verrs := agentConn(t, s.url, "viewer", v)

	vjs, err := jetstream.New(vnc)
	if err != nil {
		t.Fatal(err)
	}
	wkv, err := vjs.KeyValue(ctx, "rbee_workers")
	if err != nil {
		t.Fatalf("viewer opens rbee_workers: %v", err)
	}
	hkv, err := vjs.KeyValue(ctx, "rbee_hives")
	if err != nil {
		t.Fatalf("viewer opens rbee_hives: %v", err)
	}
	testutil.Eventually(t, 15*time.Second, func() bool {
		e := getHive(hkv, "hive-1")
		return getWorker(wkv, "hive-1.w1") != nil && getWorker(wkv, "hive-1.w2") != nil &&
			getWorker(wkv, "hive-2.w1") != nil && e != nil && len(e.Workers) == 2
	}, "every role's beats reach the registry with its token, and hive-1 hears its two workers")

	before := s.q.Stats()
	seq0 := lastSeq(t, s.js, "rbee_workers")
	hseq0 := lastSeq(t, s.js, "rbee_hives")
	victim0 := entryOf(t, wkv, "hive-1.w2")
	evs, err := s.js.Stream(ctx, "rbee_events")
	if err != nil {
		t.Fatal(err)
	}
	evInfo0, err := evs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	perm0, _ := s.srv.Refusals()

	forged := rawWorker("hive-1", "w2", "forged", 99)
	forged.Status = wire.StatusDraining
	forgedEntry := mustMarshal(t, &wire.WorkerEntry{Worker: *forged, Received: wire.Received{ReceivedAtMs: time.Now().UnixMilli()}})
	type attempt struct {
		who     string
		nc      *nats.Conn
		errs    *asyncErrs
		name    string
		subject string
		msg     *nats.Msg // nil: a subscription to subject
	}
	attempts := []attempt{
		{"worker", w1nc, w1errs, "beat as another worker", "rbee.hb.worker.hive-1.w2",
			beatMsg("rbee.hb.worker.hive-1.w2", wire.SchemaWorker, mustMarshal(t, forged))},
		{"worker", w1nc, w1errs, "beat as a worker of another hive", "rbee.hb.worker.hive-2.w1",
			beatMsg("rbee.hb.worker.hive-2.w1", wire.SchemaWorker, mustMarshal(t, rawWorker("hive-2", "w1", "forged", 9)))},
		{"worker", w1nc, w1errs, "beat as its hive", "rbee.hb.hive.hive-1",
			beatMsg("rbee.hb.hive.hive-1", wire.SchemaHive, mustMarshal(t, rawHive("hive-1", "forged", 99)))},
		{"worker", w1nc, w1errs, "write another worker's registry key", "$KV.rbee_workers.hive-1.w2",
			&nats.Msg{Subject: "$KV.rbee_workers.hive-1.w2", Data: forgedEntry}},
		{"worker", w1nc, w1errs, "write its own registry key", "$KV.rbee_workers.hive-1.w1",
			&nats.Msg{Subject: "$KV.rbee_workers.hive-1.w1", Data: forgedEntry}},
		{"worker", w1nc, w1errs, "purge the worker bucket", "$JS.API.STREAM.PURGE.KV_rbee_workers",
			&nats.Msg{Subject: "$JS.API.STREAM.PURGE.KV_rbee_workers", Reply: "_INBOX.x", Data: []byte("{}")}},
		{"worker", w1nc, w1errs, "delete the event stream", "$JS.API.STREAM.DELETE.rbee_events",
			&nats.Msg{Subject: "$JS.API.STREAM.DELETE.rbee_events", Reply: "_INBOX.x"}},
		{"worker", w1nc, w1errs, "read every beat", "rbee.hb.>", nil},
		{"hive", hnc, herrs, "beat as another hive", "rbee.hb.hive.hive-2",
			beatMsg("rbee.hb.hive.hive-2", wire.SchemaHive, mustMarshal(t, rawHive("hive-2", "forged", 9)))},
		{"hive", hnc, herrs, "beat as one of its workers", "rbee.hb.worker.hive-1.w2",
			beatMsg("rbee.hb.worker.hive-1.w2", wire.SchemaWorker, mustMarshal(t, forged))},
		{"hive", hnc, herrs, "subscribe to another hive's workers", "rbee.hb.worker.hive-2.*", nil},
		{"hive", hnc, herrs, "write the hive bucket", "$KV.rbee_hives.hive-2",
			&nats.Msg{Subject: "$KV.rbee_hives.hive-2", Data: []byte("x")}},
		{"hive", hnc, herrs, "purge the hive bucket", "$JS.API.STREAM.PURGE.KV_rbee_hives",
			&nats.Msg{Subject: "$JS.API.STREAM.PURGE.KV_rbee_hives", Reply: "_INBOX.x", Data: []byte("{}")}},
		{"viewer", vnc, verrs, "write a registry key", "$KV.rbee_workers.hive-1.w2",
			&nats.Msg{Subject: "$KV.rbee_workers.hive-1.w2", Data: forgedEntry}},
		{"viewer", vnc, verrs, "purge the worker bucket", "$JS.API.STREAM.PURGE.KV_rbee_workers",
			&nats.Msg{Subject: "$JS.API.STREAM.PURGE.KV_rbee_workers", Reply: "_INBOX.x", Data: []byte("{}")}},
		{"viewer", vnc, verrs, "delete the event stream", "$JS.API.STREAM.DELETE.rbee_events",
			&nats.Msg{Subject: "$JS.API.STREAM.DELETE.rbee_events", Reply: "_INBOX.x"}},
		{"viewer", vnc, verrs, "beat as a worker", "rbee.hb.worker.hive-1.w2",
			beatMsg("rbee.hb.worker.hive-1.w2", wire.SchemaWorker, mustMarshal(t, forged))},
	}
	for i, a := range attempts {
		if a.msg == nil {
			if _, err := a.nc.Subscribe(a.subject, func(m *nats.Msg) { t.Errorf("%s received %s", a.who, m.Subject) }); err != nil {
				t.Fatal(err)
			}
			if err := a.nc.Flush(); err != nil {
				t.Fatal(err)
			}
		} else {
			publish(t, a.nc, a.msg)
		}
		testutil.Eventually(t, 10*time.Second, func() bool {
			p, _ := s.srv.Refusals()
			return a.errs.violation(a.subject) != nil && p >= perm0+uint64(i)+1
		}, "%s %s: a violation for %s at its handler, and the server's count at %d", a.who, a.name, a.subject, i+1)
		if w, h := lastSeq(t, s.js, "rbee_workers"), lastSeq(t, s.js, "rbee_hives"); w != seq0 || h != hseq0 {
			t.Fatalf("%s %s: registry changed (rbee_workers seq %d -> %d, rbee_hives %d -> %d)", a.who, a.name, seq0, w, hseq0, h)
		}
		t.Logf("%s %s: refused by the server (%q), registry unchanged", a.who, a.name, a.errs.violation(a.subject))
	}

	// Nothing changed: no write, no purge, no deletion; the victim's entry
	// is as it was and the queen saw no forgery.
	if p, _ := s.srv.Refusals(); p != perm0+uint64(len(attempts)) {
		t.Fatalf("server counted %d violations, want %d", p-perm0, len(attempts))
	}
	if got := lastSeq(t, s.js, "rbee_workers"); got != seq0 {
		t.Fatalf("rbee_workers seq %d, want %d: a forged write landed", got, seq0)
	}
	if got := lastSeq(t, s.js, "rbee_hives"); got != hseq0 {
		t.Fatalf("rbee_hives seq %d, want %d: a forged write landed", got, hseq0)
	}
	if v := entryOf(t, wkv, "hive-1.w2"); v.Revision() != victim0.Revision() || string(v.Value()) != string(victim0.Value()) {
		t.Fatalf("victim entry changed: revision %d -> %d", victim0.Revision(), v.Revision())
	}
	if k := keys(t, wkv); len(k) != 3 {
		t.Fatalf("rbee_workers keys %v", k)
	}
	evInfo, err := evs.Info(ctx)
	if err != nil {
		t.Fatalf("event stream after the attempts: %v", err)
	}
	if evInfo.Created != evInfo0.Created || evInfo.State.FirstSeq != evInfo0.State.FirstSeq {
		t.Fatalf("event stream re-created or purged: %+v -> %+v", evInfo0.State, evInfo.State)
	}
	after := s.q.Stats()
	if after.Accepted["worker"] != before.Accepted["worker"] {
		t.Fatalf("queen accepted %d worker beats during the attempts", after.Accepted["worker"]-before.Accepted["worker"])
	}
	for _, r := range subscriber.Reasons {
		if after.Rejected[r] != 0 {
			t.Fatalf("queen rejected %d beats as %s: a forgery reached it", after.Rejected[r], r)
		}
	}
	for name, e := range map[string]*asyncErrs{"w2": w2errs, "hive-2": h2errs, "hive-2.w1": owerrs} {
		if errs := e.list(); len(errs) != 0 {
			t.Fatalf("%s hit errors within its own permissions: %v", name, errs)
		}
	}
	if st := s.svc.Stats(); st.Authorized["worker"] < 3 || st.Authorized["hive"] < 2 || st.Authorized["viewer"] < 1 {
		t.Fatalf("callout admitted %v", st.Authorized)
	}
	// Crash hints still reach the queen for callout users: a worker whose
	// connection drops is marked disconnected at once, not at its TTL.
	ow.Close()
	testutil.Eventually(t, 15*time.Second, func() bool {
		e := getWorker(wkv, "hive-2.w1")
		return e != nil && e.Liveness == wire.LivenessDisconnected
	}, "hive-2.w1 marked disconnected after its connection dropped")
	t.Logf("%d attempts refused and counted by the server; rbee_workers seq %d and rbee_hives seq %d unchanged, victim revision %d, event stream intact, queen saw no forgery",
		len(attempts), seq0, hseq0, victim0.Revision())
}

// TestCalloutRefusesBadTokens: a connection with no token, a truncated, a
// forged or another queen's token is refused by the server at connect and
// counted by reason; revoking a hive ends its live connection and its
// workers', refuses them from then on, and a token minted after the
// revocation is admitted again. The registry does not change meanwhile.
func TestCalloutRefusesBadTokens(t *testing.T) {
	secret := newSecret(t)
	s := startCalloutQueen(t, startCalloutServer(t, secret, "a", ""), secret, 1)
	h2 := hiveToken(t, secret, "hive-2")
	w := deriveToken(t, h2, "w1")
	other := hiveToken(t, newSecret(t), "hive-2")
	forgedMAC := []byte(h2)
	if forgedMAC[len(forgedMAC)-2] == 'A' {
		forgedMAC[len(forgedMAC)-2] = 'B'
	} else {
		forgedMAC[len(forgedMAC)-2] = 'A'
	}
	renamed := strings.Replace(w, ".w1.", ".w9.", 1)
	cases := []struct {
		name, tok, reason string
	}{
		{"no token", "", auth.ReasonNoToken},
		{"truncated", h2[:len(h2)-4], auth.ReasonMalformed},
		{"garbage", "hello", auth.ReasonMalformed},
		{"forged MAC", string(forgedMAC), auth.ReasonForged},
		{"worker token moved to a sibling", renamed, auth.ReasonForged},
		{"another queen's secret", other, auth.ReasonForged},
	}
	_, auth0 := s.srv.Refusals()
	wseq0 := lastSeq(t, s.js, "rbee_workers")
	for i, c := range cases {
		before := s.svc.Stats().Refused[c.reason]
		err := refusedConnect(t, s.url, c.tok)
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("%s: %v, want an authorization violation", c.name, err)
		}
		testutil.Eventually(t, 5*time.Second, func() bool {
			_, a := s.srv.Refusals()
			return s.svc.Stats().Refused[c.reason] == before+1 && a >= auth0+uint64(i)+1
		}, "%s counted as %s by the callout and by the server: callout %v, server %v", c.name, c.reason, s.svc.Stats().Refused, fmt.Sprint(s.srv.Refusals()))
		t.Logf("%s: refused at connect (%v), counted as %s", c.name, err, c.reason)
	}

	// A live hive-2 and its worker, then the revocation.
	hnc, _ := agentConn(t, s.url, "hive-2", h2)
	wnc, _ := agentConn(t, s.url, "hive-2.w1", w)
	hid, wid := embedded.ConnID(hnc), embedded.ConnID(wnc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	revokedAt := time.Now()
	if err := auth.Revoke(ctx, s.js, subjects.DefaultPrefix, "hive.hive-2", revokedAt); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return s.svc.Stats().Kicked == 2 },
		"the revocation ends hive-2's and its worker's connections (kicked %d)", s.svc.Stats().Kicked)
	// They try to reconnect and are refused: never connected again.
	testutil.Eventually(t, 10*time.Second, func() bool {
		return s.svc.Stats().Refused[auth.ReasonRevoked] >= 2 && !hnc.IsConnected() && !wnc.IsConnected()
	}, "the kicked connections' reconnects refused as revoked (%v)", s.svc.Stats().Refused)
	if embedded.ConnID(hnc) != "" && embedded.ConnID(hnc) != hid || embedded.ConnID(wnc) != "" && embedded.ConnID(wnc) != wid {
		t.Fatal("a revoked connection reconnected")
	}
	for _, tok := range []string{h2, w} {
		if err := refusedConnect(t, s.url, tok); !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("revoked token: %v", err)
		}
	}
	if got := lastSeq(t, s.js, "rbee_workers"); got != wseq0 {
		t.Fatalf("rbee_workers seq %d -> %d during the refusals", wseq0, got)
	}
	// Re-enrolment: a token minted after the revocation gets in.
	testutil.Eventually(t, 5*time.Second, func() bool { return time.Now().UnixMilli() > revokedAt.UnixMilli() }, "the clock passes the revocation")
	again := hiveToken(t, secret, "hive-2")
	agentConn(t, s.url, "hive-2 again", again)
	t.Logf("refusals by reason %v, kicked %d", s.svc.Stats().Refused, s.svc.Stats().Kicked)
}

// TestCalloutRevocationAcrossQueens: two queens, each with its own embedded
// broker in one cluster and its own auth service. A revocation written
// through one queen ends the hive's connection on the other queen's broker
// and both refuse it from then on.
func TestCalloutRevocationAcrossQueens(t *testing.T) {
	secret := newSecret(t)
	ports := testutil.FreePorts(t, 2)
	ca, cb := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	srvA := startCalloutServer(t, secret, "a", ca, "nats-route://"+cb)
	srvB := startCalloutServer(t, secret, "b", cb, "nats-route://"+ca)
	testutil.Eventually(t, 30*time.Second, func() bool {
		var leader *embedded.Server
		for _, s := range []*embedded.Server{srvA, srvB} {
			ns := s.NATS()
			if ns.NumRoutes() < 1 || !ns.JetStreamIsCurrent() {
				return false
			}
			if ns.JetStreamIsLeader() {
				leader = s
			}
		}
		return leader != nil && len(leader.NATS().JetStreamClusterPeers()) == 2
	}, "JetStream cluster of 2 forms")
	a := startCalloutQueen(t, srvA, secret, 1)
	b := startCalloutQueen(t, srvB, secret, 1)

	h := hiveToken(t, secret, "hive-x")
	hnc, _ := agentConn(t, b.url, "hive-x on b", h)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := auth.Revoke(ctx, a.js, subjects.DefaultPrefix, "hive.hive-x", time.Now()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, func() bool { return b.svc.Stats().Kicked == 1 },
		"queen b ends the hive's connection on its broker (a kicked %d, b kicked %d)", a.svc.Stats().Kicked, b.svc.Stats().Kicked)
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if hnc.IsConnected() {
			return fmt.Errorf("the hive is connected again, to %s as %q (refused at a %v, at b %v; kicked a %d, b %d)",
				hnc.ConnectedUrlRedacted(), embedded.ConnID(hnc), a.svc.Stats().Refused, b.svc.Stats().Refused,
				a.svc.Stats().Kicked, b.svc.Stats().Kicked)
		}
		return nil
	})
	for _, url := range []string{a.url, b.url} {
		if err := refusedConnect(t, url, h); !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("revoked hive at %s: %v", url, err)
		}
	}
	t.Logf("revoked through queen a: kicked on b (%d), refused at both brokers (a %v, b %v)",
		b.svc.Stats().Kicked, a.svc.Stats().Refused, b.svc.Stats().Refused)
}

// BenchmarkCalloutConnect measures a worker's connect and close through the
// queen's callout on the embedded broker, against the same without
// authorization (loopback).
func BenchmarkCalloutConnect(b *testing.B) {
	for _, callout := range []bool{false, true} {
		b.Run(fmt.Sprintf("callout=%v", callout), func(b *testing.B) {
			secret, _ := token.NewSecret()
			sc := embedded.DefaultConfig(b.TempDir())
			sc.Port = -1
			var tok string
			if callout {
				br, _ := auth.Broker(secret)
				sc.Auth, sc.Callout = true, &embedded.Callout{Issuer: br.Issuer, User: br.User, Password: br.Password}
			}
			srv, err := embedded.New(sc)
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Shutdown()
			if callout {
				br, _ := auth.Broker(secret)
				qnc, err := natsconn.Connect(natsconn.Config{URL: srv.ClientURL(), User: br.User, Password: br.Password, ConnectTimeout: 5 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				defer qnc.Close()
				svc, err := auth.New(qnc, auth.DefaultConfig(secret))
				if err != nil {
					b.Fatal(err)
				}
				if err := svc.Start(context.Background()); err != nil {
					b.Fatal(err)
				}
				defer svc.Stop()
				h, _ := secret.Hive("gpu-node-1", time.Now())
				tok, _ = token.Derive(h, "llama-0")
			}
			for b.Loop() {
				nc, err := natsconn.Connect(natsconn.Config{URL: srv.ClientURL(), Token: tok, ConnectTimeout: 5 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				nc.Close()
			}
		})
	}
}

// TestCalloutEmbeddedConfigFile: an embedded broker given only a
// configuration file with the `rbee token server-config` block (what a
// cluster beyond loopback runs with --config and --auth-callout) sends its
// clients to the queen's callout like the external server does.
func TestCalloutEmbeddedConfigFile(t *testing.T) {
	secret := newSecret(t)
	b, _ := auth.Broker(secret)
	conf := filepath.Join(t.TempDir(), "server.conf")
	if err := os.WriteFile(conf, []byte(b.ServerConfig()), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := embedded.DefaultConfig(t.TempDir())
	sc.Port, sc.Logger, sc.ConfigFile = -1, testutil.Logger(t), conf
	srv, err := embedded.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	s := startCalloutQueen(t, srv, secret, 1)
	h := hiveToken(t, secret, "hive-1")
	wnc, werrs := agentConn(t, s.url, "w1", deriveToken(t, h, "w1"))
	publish(t, wnc, beatMsg("rbee.hb.worker.hive-1.w2", wire.SchemaWorker, mustMarshal(t, rawWorker("hive-1", "w2", "forged", 1))))
	testutil.Eventually(t, 10*time.Second, func() bool { return werrs.violation("rbee.hb.worker.hive-1.w2") != nil }, "the forgery refused")
	if err := refusedConnect(t, s.url, hiveToken(t, newSecret(t), "hive-1")); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("another queen's token: %v", err)
	}
	if err := refusedConnect(t, s.url, ""); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("no token: %v", err)
	}
	if st := s.svc.Stats(); st.Authorized["worker"] != 1 || st.Refused[auth.ReasonForged] != 1 || st.Refused[auth.ReasonNoToken] != 1 {
		t.Fatalf("callout stats %+v", st)
	}
}
