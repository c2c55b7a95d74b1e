package integration

import (
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/wire"
)

// TestStressPausedQueen runs two queens in one queue group on one broker: one
// in this process, one an `rbee queen --nats-url` child. The child is stopped
// with SIGSTOP for 2 × TTL and then continued. It asserts that no worker
// expires meanwhile or in the TTL after: the queue group must stop handing a
// frozen queen its share, or the other queen must keep every worker alive.
func TestStressPausedQueen(t *testing.T) {
	const (
		interval = time.Second
		ttl      = 3 * interval
		workers  = 30
	)
	bin := filepath.Join(rbeeBinary(t), "rbee")
	srv := testutil.Server(t)
	startQueen(t, srv.ClientURL(), ttl)
	args := append([]string{"queen", "--nats-url", srv.ClientURL(), "--http", "off", "--log-level", "warn"}, queenTTLArgs(t, bin, 3)...)
	out, cmd := startProcess(t, bin, args...)
	testutil.Eventually(t, 30*time.Second, func() bool { return subscribedAs(srv, "rbee-queen", "rbee.hb.>") },
		"the child queen subscribes to the beats:\n%s", out)

	w := watchWorkers(t, srv.ClientURL())
	nc := conn(t, srv.ClientURL(), "workers")
	for i := range workers {
		startWorker(t, nc, "gpu-node-1", fmt.Sprintf("w%d", i), interval)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { p, _ := w.present(hiveKeys("gpu-node-1"), time.Time{}); return p == workers },
		"%d workers registered: %s", workers, w)
	window(2 * interval) // both queens take their share

	t0 := time.Now()
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	window(2 * ttl)
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	window(ttl + interval)
	if got := w.expiredSince(hiveKeys("gpu-node-1"), t0); len(got) > 0 {
		t.Errorf("%d of %d workers expired while one of two queens was paused: %v\n%s\nchild queen:\n%s", len(got), workers, got, w, out)
	}
	// The resumed queen does not write the old beats it found waiting over
	// the newer ones the other queen wrote meanwhile.
	var late []string
	for _, o := range w.ops(hiveKeys("gpu-node-1")) {
		if o.op == jetstream.KeyValuePut && o.at.Sub(o.sentAt) > 2*interval {
			late = append(late, fmt.Sprintf("%s seq %d written %s after it was sent, at %s from the pause", o.key, o.seq,
				o.at.Sub(o.sentAt).Round(time.Millisecond), o.at.Sub(t0).Round(time.Millisecond)))
		}
	}
	if len(late) > 0 {
		t.Errorf("%d beats written late after the resume: %v\nchild queen:\n%s", len(late), late, out)
	}
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

// TestStressPausedOnlyQueen stops the only queen (an `rbee queen --nats-url`
// child) for longer than the TTL: nothing can keep the workers alive then,
// but the queen must report the registry disrupted once it runs again, and
// write every worker again.
func TestStressPausedOnlyQueen(t *testing.T) {
	const (
		interval = time.Second
		ttl      = 3 * interval
		workers  = 10
	)
	bin := filepath.Join(rbeeBinary(t), "rbee")
	srv := testutil.Server(t)
	args := append([]string{"queen", "--nats-url", srv.ClientURL(), "--http", "off", "--log-level", "warn"}, queenTTLArgs(t, bin, 3)...)
	out, cmd := startProcess(t, bin, args...)
	nc := conn(t, srv.ClientURL(), "observer")
	var mu sync.Mutex
	var states []string
	sub, err := nc.Subscribe("rbee.hb.queen.*", func(m *nats.Msg) {
		if q, err := wire.DecodeQueen(m.Data); err == nil {
			mu.Lock()
			states = append(states, string(q.State)+" "+q.Reason)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	w := watchWorkers(t, srv.ClientURL())
	wc := conn(t, srv.ClientURL(), "workers")
	for i := range workers {
		startWorker(t, wc, "gpu-node-1", fmt.Sprintf("w%d", i), interval)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { p, _ := w.present(hiveKeys("gpu-node-1"), time.Time{}); return p == workers },
		"%d workers registered: %s\n%s", workers, w, out)

	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	window(ttl + 2*interval)
	resumed := time.Now()
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range states {
			if strings.HasPrefix(s, "disrupted") {
				return true
			}
		}
		return false
	}, "the queen reports the registry disrupted after it was stopped; its beats: %v\n%s", func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(states)
	}(), out)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, fresh := w.present(hiveKeys("gpu-node-1"), resumed)
		return fresh == workers
	}, "every worker written again after the resume: %s", w)
}

// TestPausedQueenGoodbye: with two and three queens, one (an `rbee queen`
// child) is stopped with SIGSTOP while its share of one round of beats waits
// in its socket; every worker then says goodbye, through whichever queen the
// group hands it to, and stops. When the stopped queen resumes, the beats it
// holds are older than the goodbyes the others wrote: no worker may come
// back (a write after its DEL), and none may expire instead of leaving.
func TestPausedQueenGoodbye(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d queens", n), func(t *testing.T) {
			const (
				interval = time.Second
				ttl      = 3 * interval
				workers  = 40
			)
			bin := filepath.Join(rbeeBinary(t), "rbee")
			srv := testutil.Server(t)
			var local []*queen.Queen
			for range n - 1 {
				q, _ := startQueen(t, srv.ClientURL(), ttl)
				local = append(local, q)
			}
			args := append([]string{"queen", "--nats-url", srv.ClientURL(), "--http", "off", "--log-level", "warn"}, queenTTLArgs(t, bin, 3)...)
			out, cmd := startProcess(t, bin, args...)
			testutil.Eventually(t, 30*time.Second, func() bool {
				for _, q := range local {
					if q.Registry() == nil || len(q.Registry().Queens()) != n {
						return false
					}
				}
				return true
			}, "the %d queens see each other:\n%s", n, out)
			window(2 * interval) // each queen's reserve follows its peers

			w := watchWorkers(t, srv.ClientURL())
			l := startRawLoad(t, srv.ClientURL(), "gpu-node-1", workers)
			testutil.Eventually(t, 20*time.Second, func() bool { p, _ := w.present(hiveKeys("gpu-node-1"), time.Time{}); return p == workers },
				"%d workers registered: %s", workers, w)

			if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			// Just after a round, while the stopped queen's share of it is
			// still in its socket and in the others' reserves: goodbyes.
			l.mu.Lock()
			round := l.round
			l.mu.Unlock()
			testutil.Eventually(t, 5*time.Second, func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.round > round },
				"a new round of beats")
			window(100 * time.Millisecond)
			l.goodbye(t, workers)
			testutil.Eventually(t, 10*time.Second, func() bool {
				for i := range workers {
					if left, _ := w.left(l.key(i)); !left {
						return false
					}
				}
				return true
			}, "every worker left: %s", w)
			window(interval)
			if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			window(ttl + interval)
			var back []string
			for i := range workers {
				key, gone := l.key(i), false
				for _, o := range w.ops(func(k string) bool { return k == key }) {
					switch {
					case o.op == jetstream.KeyValueDelete:
						gone = true
					case gone:
						back = append(back, fmt.Sprintf("%s %s seq %d after its goodbye", key, o.op, o.seq))
					}
				}
			}
			if len(back) > 0 {
				t.Errorf("%d writes after a goodbye: %v\n%s\nchild queen:\n%s", len(back), back, w, out)
			}
		})
	}
}
