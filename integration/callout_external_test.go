package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/auth"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

var (
	natsServerOnce sync.Once
	natsServerPath string
	natsServerErr  error
)

// natsServerBinary builds the nats-server this module depends on (from the
// module cache, the very version the embedded broker runs) once per run.
func natsServerBinary(t *testing.T) string {
	t.Helper()
	natsServerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rbee-nats-server-")
		if err != nil {
			natsServerErr = err
			return
		}
		natsServerPath = filepath.Join(dir, "nats-server")
		out, err := exec.Command("go", "build", "-o", natsServerPath, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			natsServerErr = &buildError{string(out)}
		}
	})
	if natsServerErr != nil {
		t.Fatalf("build nats-server: %v", natsServerErr)
	}
	return natsServerPath
}

// TestCalloutExternalServer runs a separate nats-server process configured
// only through its file, with the block `rbee token server-config` prints
// (auth.BrokerAuth.ServerConfig). The queen connects as the queens' user
// and serves the callout, as `rbee queen --nats-url … --auth-callout` does;
// agents get in with their tokens alone and only within their subjects; a
// forged token is refused; a revocation ends the hive's live connection
// through the system account and refuses it from then on.
func TestCalloutExternalServer(t *testing.T) {
	bin := natsServerBinary(t)
	secret := newSecret(t)
	b, err := auth.Broker(secret)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := testutil.FreePorts(t, 1)[0]
	conf := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listen: 127.0.0.1:%d\nserver_name: external\njetstream { store_dir: %q }\n%s",
		port, filepath.Join(dir, "js"), b.ServerConfig())), 0o600); err != nil {
		t.Fatal(err)
	}
	out := start(t, nil, bin, "-c", conf)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	var qnc *nats.Conn
	testutil.Eventually(t, 30*time.Second, func() bool {
		qnc, err = natsconn.Connect(natsconn.Config{URL: url, Name: "rbee-queen", User: b.User, Password: b.Password, ConnectTimeout: 2 * time.Second})
		return err == nil
	}, "the external nats-server admits the queens' user: %v\n%s", err, out)
	t.Cleanup(qnc.Close)
	sys, err := natsconn.Connect(natsconn.Config{URL: url, Name: "rbee-queen-sys", User: b.SysUser, Password: b.SysPassword, ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("system user: %v\n%s", err, out)
	}
	t.Cleanup(sys.Close)

	ac := auth.DefaultConfig(secret)
	ac.Logger, ac.Kick = testutil.Logger(t), auth.SystemKick(sys, 2*time.Second)
	svc, err := auth.New(qnc, ac)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(t.Context()); err != nil {
		t.Fatalf("auth service on the external server: %v\n%s", err, out)
	}
	t.Cleanup(svc.Stop)
	qc := queen.DefaultConfig()
	qc.Logger = testutil.Logger(t)
	q, err := queen.New(qnc, qc)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatalf("queen on the external server: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	js, err := jetstream.New(qnc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	wkv, err := js.KeyValue(ctx, "rbee_workers")
	if err != nil {
		t.Fatal(err)
	}
	hkv, err := js.KeyValue(ctx, "rbee_hives")
	if err != nil {
		t.Fatal(err)
	}

	ht := hiveToken(t, secret, "gpu-node-1")
	hnc, _ := agentConn(t, url, "hive", ht)
	hc := hive.DefaultConfig("gpu-node-1")
	hc.Interval, hc.Version = 20*time.Second, "test"
	h, err := hive.New(hnc, hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
	wnc, werrs := agentConn(t, url, "worker", deriveToken(t, ht, "llama-0"))
	wc := worker.DefaultConfig("gpu-node-1", "llama-0")
	wc.Interval = 20 * time.Second
	w, err := worker.New(wnc, wc)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	testutil.Eventually(t, 15*time.Second, func() bool {
		return getWorker(wkv, "gpu-node-1.llama-0") != nil && getHive(hkv, "gpu-node-1") != nil
	}, "the hive's and the worker's beats reach the registry through the external server")
	seq0 := lastSeq(t, js, "rbee_workers")
	for _, m := range []*nats.Msg{
		beatMsg("rbee.hb.worker.gpu-node-1.llama-1", wire.SchemaWorker, mustMarshal(t, rawWorker("gpu-node-1", "llama-1", "forged", 1))),
		{Subject: "$KV.rbee_workers.gpu-node-1.llama-1", Data: []byte("x")},
		{Subject: "$JS.API.STREAM.PURGE.KV_rbee_workers", Reply: "_INBOX.x", Data: []byte("{}")},
	} {
		publish(t, wnc, m)
		testutil.Eventually(t, 10*time.Second, func() bool { return werrs.violation(m.Subject) != nil },
			"the external server refuses the worker's %s", m.Subject)
	}
	if got := lastSeq(t, js, "rbee_workers"); got != seq0 {
		t.Fatalf("rbee_workers seq %d -> %d", seq0, got)
	}
	forged := []byte(ht)
	if forged[len(forged)-10] == 'A' { // a MAC character changed, still base64url
		forged[len(forged)-10] = 'B'
	} else {
		forged[len(forged)-10] = 'A'
	}
	if err := refusedConnect(t, url, string(forged)); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("forged token: %v", err)
	}
	if err := refusedConnect(t, url, hiveToken(t, newSecret(t), "gpu-node-1")); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("another queen's token: %v", err)
	}

	if err := auth.Revoke(ctx, js, subjects.DefaultPrefix, "hive.gpu-node-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, func() bool { return svc.Stats().Kicked == 2 },
		"the revocation ends the hive's and its worker's connections through the system account (kicked %d)", svc.Stats().Kicked)
	testutil.Eventually(t, 15*time.Second, func() bool {
		return !hnc.IsConnected() && !wnc.IsConnected() && svc.Stats().Refused[auth.ReasonRevoked] >= 2
	}, "their reconnects refused (%v)", svc.Stats().Refused)
	if err := refusedConnect(t, url, ht); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("revoked token: %v", err)
	}
	t.Logf("external nats-server with the callout: agents admitted %v, refused %v, kicked %d", svc.Stats().Authorized, svc.Stats().Refused, svc.Stats().Kicked)
}
