package queen

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/internal/testutil"
)

// TestPeerLinger: another queen that stops beating while its connection
// stays open (stopped or cut off, and so still handed its share by the
// broker) keeps counting as a peer after its entry expired, until the broker
// closes its connection; a queen whose connection was closed before its entry
// expired does not count at all.
func TestPeerLinger(t *testing.T) {
	srv := testutil.Server(t)
	cfg := testConfig(t)
	cfg.QueenID, cfg.Advisories, cfg.PeerLinger = "q-a", true, time.Hour
	a := startTestQueen(t, srv.ClientURL(), cfg)
	peer := func(id string) (*Queen, *nats.Conn) {
		c := testConfig(t)
		c.QueenID, c.Interval = id, 200*time.Millisecond
		nc := testutil.Connect(t, srv.ClientURL())
		q, err := New(nc, c)
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		return q, nc
	}
	state := func() string {
		live, lingering := a.peers(time.Now())
		return fmt.Sprintf("live %d, lingering %d", live, lingering)
	}
	want := func(s string) func() error {
		return func() error {
			if got := state(); got != s {
				return fmt.Errorf("peers: %s; want %s", got, s)
			}
			return nil
		}
	}

	// Stops beating, connection open: its entry expires, and it lingers.
	b, bnc := peer("q-b")
	checkFor(t, 10*time.Second, want("live 1, lingering 0"))
	b.self.Abandon()
	checkFor(t, 10*time.Second, want("live 0, lingering 1"))
	if g := gaugeOf(t, a, "rbee_queen_peers_lingering"); g != 1 {
		t.Fatalf("rbee_queen_peers_lingering %v, want 1", g)
	}
	// The broker closes its connection: the linger ends.
	bnc.Close()
	checkFor(t, 10*time.Second, want("live 0, lingering 0"))

	// Connection closed before its entry expired: no linger.
	c, cnc := peer("q-c")
	checkFor(t, 10*time.Second, want("live 1, lingering 0"))
	c.self.Abandon()
	cnc.Close()
	checkFor(t, 10*time.Second, func() error {
		if a.Registry() != nil && len(a.Registry().Queens()) == 1 {
			return nil
		}
		return fmt.Errorf("its entry has not expired: %s", state())
	})
	if s := state(); s != "live 0, lingering 0" {
		t.Fatalf("a queen whose connection closed before its entry expired: %s; want live 0, lingering 0", s)
	}

	// Stops beating, connection open: it lingers for PeerLinger at most.
	d, _ := peer("q-d")
	checkFor(t, 10*time.Second, want("live 1, lingering 0"))
	d.self.Abandon()
	checkFor(t, 10*time.Second, want("live 0, lingering 1"))
	if live, lingering := a.peers(time.Now().Add(cfg.PeerLinger)); live+lingering != 0 {
		t.Fatalf("after the linger: live %d, lingering %d; want none", live, lingering)
	}
}
