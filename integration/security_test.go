package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/subscriber"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// pki is a throw-away CA and a server certificate it signed, as PEM files.
type pki struct {
	CA, Cert, Key string
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// newPKI writes a self-signed CA and a certificate for 127.0.0.1 and
// localhost signed by it into dir.
func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rbee test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "rbee test server"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := pki{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "server.pem"), Key: filepath.Join(dir, "server-key.pem")}
	writePEM(t, p.CA, "CERTIFICATE", caDER)
	writePEM(t, p.Cert, "CERTIFICATE", der)
	writePEM(t, p.Key, "EC PRIVATE KEY", keyDER)
	return p
}

// identity is one nkey user: its public key for the server and its seed file
// for the client.
type identity struct {
	HiveID, WorkerID string
	NKey             string
	Seed             string // path of the seed file
}

func newIdentity(t *testing.T, dir, name string) identity {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".nk")
	if err := os.WriteFile(path, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return identity{NKey: pub, Seed: path}
}

// permissionsData fills integration/testdata/permissions.conf.
type permissionsData struct {
	Queen, Viewer string
	Hives         []identity
	Workers       []identity
}

// renderPermissions renders the permission template into dir and returns its path.
func renderPermissions(t *testing.T, dir string, data permissionsData) string {
	t.Helper()
	tmpl, err := template.ParseFiles(filepath.Join("testdata", "permissions.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, data); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "permissions.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// asyncErrs records the asynchronous errors of one connection.
type asyncErrs struct {
	mu  sync.Mutex
	all []error
}

func (a *asyncErrs) add(err error) { a.mu.Lock(); a.all = append(a.all, err); a.mu.Unlock() }

func (a *asyncErrs) list() []error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]error(nil), a.all...)
}

// violation returns the permission violation naming subject, if one arrived.
func (a *asyncErrs) violation(subject string) error {
	for _, err := range a.list() {
		if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
			return err
		}
	}
	return nil
}

// secureConn connects through natsconn with an nkey seed file and the test
// CA, recording asynchronous errors through OnAsyncError.
func secureConn(t *testing.T, url, name string, c natsconn.Config) (*nats.Conn, *asyncErrs) {
	t.Helper()
	errs := &asyncErrs{}
	c.URL, c.Name = url, name
	c.ReconnectWait, c.ConnectTimeout = 20*time.Millisecond, 2*time.Second
	c.Logger = testutil.Logger(t)
	c.OnAsyncError = errs.add
	nc, err := natsconn.Connect(c)
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// TestSecurityNKeysTLSPermissions runs the whole system on a broker that
// requires TLS and nkey authentication and enforces the permission template
// in testdata/permissions.conf. Legitimate traffic of every role passes with
// no violation; a worker that publishes as another worker, writes registry
// keys directly, purges the bucket or snoops on beats is refused by the
// server, the violation reaches the client's OnAsyncError, and nothing
// changes in the registry. So is a hive reaching beyond its own subjects.
func TestSecurityNKeysTLSPermissions(t *testing.T) {
	dir := t.TempDir()
	certs := newPKI(t, dir)
	queenID, viewerID := newIdentity(t, dir, "queen"), newIdentity(t, dir, "viewer")
	hiveID := newIdentity(t, dir, "hive-1")
	hiveID.HiveID = "hive-1"
	w1, w2 := newIdentity(t, dir, "w1"), newIdentity(t, dir, "w2")
	w1.HiveID, w1.WorkerID, w2.HiveID, w2.WorkerID = "hive-1", "w1", "hive-1", "w2"
	renderPermissions(t, dir, permissionsData{Queen: queenID.NKey, Viewer: viewerID.NKey,
		Hives: []identity{hiveID}, Workers: []identity{w1, w2}})
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, []byte(`
tls {
  cert_file: "`+certs.Cert+`"
  key_file: "`+certs.Key+`"
  timeout: 2
}
include ./permissions.conf
`), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := embedded.DefaultConfig(t.TempDir())
	sc.Port, sc.ConfigFile, sc.Logger = -1, conf, testutil.Logger(t)
	srv, err := embedded.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	url := srv.ClientURL()
	as := func(id identity) natsconn.Config { return natsconn.Config{NKeyFile: id.Seed, TLSCAFile: certs.CA} }

	// Without credentials, or without trusting the CA, nobody gets in.
	if nc, err := natsconn.Connect(natsconn.Config{URL: url, TLSCAFile: certs.CA, ConnectTimeout: 2 * time.Second}); err == nil {
		nc.Close()
		t.Fatal("a client without credentials was let in")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("no credentials: %v, want an authorization violation", err)
	}
	var unknownCA x509.UnknownAuthorityError
	if nc, err := natsconn.Connect(natsconn.Config{URL: url, NKeyFile: w1.Seed, ConnectTimeout: 2 * time.Second}); err == nil {
		nc.Close()
		t.Fatal("a client that does not trust the CA connected")
	} else if !errors.As(err, &unknownCA) {
		t.Fatalf("untrusted server certificate: %v, want an unknown authority error", err)
	}

	// Every role works within its permissions.
	qnc, qerrs := secureConn(t, url, "queen", as(queenID))
	qc := queen.DefaultConfig()
	qc.Logger = testutil.Logger(t)
	ev := &events{}
	qc.OnEvent = ev.add
	q, err := queen.New(qnc, qc)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatalf("queen under its permissions: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	vnc, verrs := secureConn(t, url, "viewer", as(viewerID))
	js, err := jetstream.New(vnc)
	if err != nil {
		t.Fatal(err)
	}
	wkv, err := js.KeyValue(ctx, "rbee_workers")
	if err != nil {
		t.Fatalf("viewer opens rbee_workers: %v", err)
	}
	hkv, err := js.KeyValue(ctx, "rbee_hives")
	if err != nil {
		t.Fatalf("viewer opens rbee_hives: %v", err)
	}

	hnc, herrs := secureConn(t, url, "hive-1", as(hiveID))
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

	w2nc, w2errs := secureConn(t, url, "w2", as(w2))
	wc := worker.DefaultConfig("hive-1", "w2")
	wc.Interval = 20 * time.Second // one beat at start, then quiet: the victim's entry stays put
	victim, err := worker.New(w2nc, wc)
	if err != nil {
		t.Fatal(err)
	}
	if err := victim.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(victim.Abandon)

	w1nc, w1errs := secureConn(t, url, "w1", as(w1))
	publish(t, w1nc, beatMsg("rbee.hb.worker.hive-1.w1", wire.SchemaWorker, mustMarshal(t, rawWorker("hive-1", "w1", "w1-a", 1))))
	testutil.Eventually(t, 10*time.Second, func() bool {
		return getWorker(wkv, "hive-1.w1") != nil && getWorker(wkv, "hive-1.w2") != nil && getHive(hkv, "hive-1") != nil
	}, "every role's beats reach the registry")
	testutil.Eventually(t, 10*time.Second, func() bool {
		e := getHive(hkv, "hive-1")
		return e != nil && len(e.Workers) == 2
	}, "the hive hears its two workers")

	before := q.Stats()
	seq0 := lastSeq(t, js, "rbee_workers")
	victim0 := entryOf(t, wkv, "hive-1.w2")

	// What a compromised worker w1 tries, each refused by the server.
	forged := rawWorker("hive-1", "w2", "forged", 99)
	forged.Status = wire.StatusDraining
	forgedEntry := mustMarshal(t, &wire.WorkerEntry{Worker: *forged, Received: wire.Received{ReceivedAtMs: time.Now().UnixMilli()}})
	attempts := []struct {
		name, subject string
		msg           *nats.Msg
		sub           bool
	}{
		{name: "beat as another worker", subject: "rbee.hb.worker.hive-1.w2",
			msg: beatMsg("rbee.hb.worker.hive-1.w2", wire.SchemaWorker, mustMarshal(t, forged))},
		{name: "beat as a worker of another hive", subject: "rbee.hb.worker.hive-2.w1",
			msg: beatMsg("rbee.hb.worker.hive-2.w1", wire.SchemaWorker, mustMarshal(t, rawWorker("hive-2", "w1", "forged", 1)))},
		{name: "beat as a hive", subject: "rbee.hb.hive.hive-1",
			msg: beatMsg("rbee.hb.hive.hive-1", wire.SchemaHive, mustMarshal(t, rawHive("hive-1", "forged", 99)))},
		{name: "write another worker's registry key", subject: "$KV.rbee_workers.hive-1.w2",
			msg: &nats.Msg{Subject: "$KV.rbee_workers.hive-1.w2", Data: forgedEntry}},
		{name: "write its own registry key", subject: "$KV.rbee_workers.hive-1.w1",
			msg: &nats.Msg{Subject: "$KV.rbee_workers.hive-1.w1", Data: forgedEntry}},
		{name: "delete a registry key", subject: "$KV.rbee_workers.hive-1.w2",
			msg: &nats.Msg{Subject: "$KV.rbee_workers.hive-1.w2", Header: nats.Header{"KV-Operation": []string{"DEL"}}}},
		{name: "purge the worker bucket", subject: "$JS.API.STREAM.PURGE.KV_rbee_workers",
			msg: &nats.Msg{Subject: "$JS.API.STREAM.PURGE.KV_rbee_workers", Data: []byte("{}")}},
		{name: "read every beat", subject: "rbee.hb.>", sub: true},
	}
	for _, a := range attempts {
		n := len(w1errs.list())
		if a.sub {
			if _, err := w1nc.Subscribe(a.subject, func(*nats.Msg) { t.Errorf("w1 received a beat on %s", a.subject) }); err != nil {
				t.Fatal(err)
			}
			if err := w1nc.Flush(); err != nil {
				t.Fatal(err)
			}
		} else {
			publish(t, w1nc, a.msg)
		}
		testutil.Eventually(t, 5*time.Second, func() bool { return w1errs.violation(a.subject) != nil && len(w1errs.list()) > n },
			"%s: violation for %s at w1's OnAsyncError", a.name, a.subject)
		t.Logf("w1 %s: refused by the server, OnAsyncError got %q", a.name, w1errs.list()[len(w1errs.list())-1])
	}
	// A hive reaching beyond its own subjects.
	publish(t, hnc, beatMsg("rbee.hb.hive.hive-2", wire.SchemaHive, mustMarshal(t, rawHive("hive-2", "forged", 1))))
	if _, err := hnc.Subscribe("rbee.hb.worker.hive-2.*", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := hnc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"rbee.hb.hive.hive-2", "rbee.hb.worker.hive-2.*"} {
		testutil.Eventually(t, 5*time.Second, func() bool { return herrs.violation(s) != nil }, "hive violation for %s", s)
		t.Logf("hive-1 on %s: refused, OnAsyncError got %q", s, herrs.violation(s))
	}

	// Nothing changed: exactly one write follows w1's next legitimate beat,
	// the victim's entry is untouched, and the queen never saw the forgeries.
	publish(t, w1nc, beatMsg("rbee.hb.worker.hive-1.w1", wire.SchemaWorker, mustMarshal(t, rawWorker("hive-1", "w1", "w1-a", 2))))
	testutil.Eventually(t, 5*time.Second, func() bool {
		e := getWorker(wkv, "hive-1.w1")
		return e != nil && e.Seq == 2 && e.InstanceID == "w1-a"
	}, "w1's own next beat is stored")
	if got := lastSeq(t, js, "rbee_workers"); got != seq0+1 {
		t.Fatalf("rbee_workers seq %d, want %d: a forged write landed", got, seq0+1)
	}
	if v := entryOf(t, wkv, "hive-1.w2"); v.Revision() != victim0.Revision() || string(v.Value()) != string(victim0.Value()) {
		t.Fatalf("victim entry changed: revision %d -> %d", victim0.Revision(), v.Revision())
	}
	if k := keys(t, wkv); len(k) != 2 || !k["hive-1.w1"] || !k["hive-1.w2"] {
		t.Fatalf("rbee_workers keys %v", k)
	}
	if k := keys(t, hkv); len(k) != 1 || !k["hive-1"] {
		t.Fatalf("rbee_hives keys %v", k)
	}
	after := q.Stats()
	if after.Accepted["worker"] != before.Accepted["worker"]+1 {
		t.Fatalf("queen accepted %d worker beats during the attempts, want 1", after.Accepted["worker"]-before.Accepted["worker"])
	}
	for _, r := range subscriber.Reasons {
		if after.Rejected[r] != 0 {
			t.Fatalf("queen rejected %d beats as %s: a forgery reached it", after.Rejected[r], r)
		}
	}
	for name, e := range map[string]*asyncErrs{"queen": qerrs, "viewer": verrs, "w2": w2errs} {
		if errs := e.list(); len(errs) != 0 {
			t.Fatalf("%s hit errors within its own permissions: %v", name, errs)
		}
	}
	if n := len(herrs.list()); n != 2 {
		t.Fatalf("hive got %d async errors, want its 2 violations: %v", n, herrs.list())
	}
	t.Logf("TLS + nkeys: no credentials and an untrusted CA refused; queen, viewer, hive and workers ran with no violation; %d forgery attempts refused, rbee_workers unchanged (seq %d + w1's own beat), victim revision %d unchanged, queen rejected nothing",
		len(attempts)+2, seq0, victim0.Revision())
}

// credsFile writes a .creds file for a new user of the account akp with the
// given publish allow list and subscribe deny list (nil: unrestricted).
func credsFile(t *testing.T, dir, name string, akp nkeys.KeyPair, pubAllow, subDeny []string) string {
	t.Helper()
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	useed, _ := ukp.Seed()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	uc.Pub.Allow.Add(pubAllow...)
	uc.Sub.Deny.Add(subDeny...)
	ujwt, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSecurityCredsFile runs the queen and a worker on a broker in operator
// (JWT) mode, each connecting with a .creds file through natsconn. The
// worker's user JWT allows publishing its own subject only: its beats reach
// the registry, while a beat as another worker and a direct registry write
// are refused at its OnAsyncError and change nothing.
func TestSecurityCredsFile(t *testing.T) {
	dir := t.TempDir()
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	skp, _ := nkeys.CreateAccount()
	spub, _ := skp.PublicKey()
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.SystemAccount = spub
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	ac := jwt.NewAccountClaims(apub)
	ac.Name = "rbee"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, []byte(`
operator: "`+ojwt+`"
system_account: `+spub+`
resolver: MEMORY
resolver_preload: {
  `+spub+`: "`+sjwt+`"
  `+apub+`: "`+ajwt+`"
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := embedded.DefaultConfig(t.TempDir())
	sc.Port, sc.ConfigFile, sc.Logger = -1, conf, testutil.Logger(t)
	srv, err := embedded.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	url := srv.ClientURL()

	queenCreds := credsFile(t, dir, "queen", akp, nil, nil) // the template's queen limits are proven with nkeys
	w1Creds := credsFile(t, dir, "w1", akp, []string{"rbee.hb.worker.hive-1.w1"}, []string{">"})
	if nc, err := natsconn.Connect(natsconn.Config{URL: url, ConnectTimeout: 2 * time.Second}); err == nil {
		nc.Close()
		t.Fatal("a client without credentials was let in")
	}

	qnc, qerrs := secureConn(t, url, "queen", natsconn.Config{CredsFile: queenCreds})
	qc := queen.DefaultConfig()
	qc.Logger = testutil.Logger(t)
	q, err := queen.New(qnc, qc)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatalf("queen with a creds file: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		q.Stop(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inspect, _ := secureConn(t, url, "inspect", natsconn.Config{CredsFile: queenCreds})
	js, err := jetstream.New(inspect)
	if err != nil {
		t.Fatal(err)
	}
	wkv, err := js.KeyValue(ctx, "rbee_workers")
	if err != nil {
		t.Fatal(err)
	}

	w1nc, w1errs := secureConn(t, url, "w1", natsconn.Config{CredsFile: w1Creds})
	wc := worker.DefaultConfig("hive-1", "w1")
	wc.Interval = 20 * time.Second // beats at start and on each status change only
	w, err := worker.New(w1nc, wc)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	testutil.Eventually(t, 10*time.Second, func() bool { return getWorker(wkv, "hive-1.w1") != nil }, "w1's beat stored")
	seq0 := lastSeq(t, js, "rbee_workers")
	entry0 := entryOf(t, wkv, "hive-1.w1")

	forged := rawWorker("hive-1", "w2", "forged", 1)
	for _, msg := range []*nats.Msg{
		beatMsg("rbee.hb.worker.hive-1.w2", wire.SchemaWorker, mustMarshal(t, forged)),
		{Subject: "$KV.rbee_workers.hive-1.w1", Data: mustMarshal(t, &wire.WorkerEntry{Worker: *forged})},
	} {
		publish(t, w1nc, msg)
		testutil.Eventually(t, 5*time.Second, func() bool { return w1errs.violation(msg.Subject) != nil },
			"violation for %s at w1's OnAsyncError", msg.Subject)
		t.Logf("w1 (creds) publishing to %s: refused, OnAsyncError got %q", msg.Subject, w1errs.violation(msg.Subject))
	}
	if e := entryOf(t, wkv, "hive-1.w1"); e.Revision() != entry0.Revision() {
		t.Fatalf("w1's entry changed: revision %d -> %d", entry0.Revision(), e.Revision())
	}
	// w1's next legitimate beat is the only write that follows.
	if err := w.SetStatus(wire.StatusReady, wire.Healthy, ""); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		e := getWorker(wkv, "hive-1.w1")
		return e != nil && e.Status == wire.StatusReady
	}, "w1's status change stored")
	if got := lastSeq(t, js, "rbee_workers"); got != seq0+1 {
		t.Fatalf("rbee_workers seq %d, want %d: a forged write landed", got, seq0+1)
	}
	if k := keys(t, wkv); len(k) != 1 || !k["hive-1.w1"] {
		t.Fatalf("rbee_workers keys %v", k)
	}
	for _, r := range subscriber.Reasons {
		if n := q.Stats().Rejected[r]; n != 0 {
			t.Fatalf("queen rejected %d beats as %s: a forgery reached it", n, r)
		}
	}
	if errs := qerrs.list(); len(errs) != 0 {
		t.Fatalf("queen errors: %v", errs)
	}
	t.Logf("operator mode: queen and worker connected with .creds files; w1's own beats stored, its 2 forgeries refused and rbee_workers unchanged apart from its next own beat")
}
