package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// TestQueenCLICluster runs the README's "cluster of three" as written: three
// `rbee queen` processes whose embedded brokers join one JetStream cluster
// with --cluster/--routes/--server-name and keep the buckets in three replicas.
// Simulated workers beat through the list of members; the registry reads the
// same from every member; the queen whose broker leads the worker bucket is
// killed, and the workers stay registered and keep beating into the other two.
func TestQueenCLICluster(t *testing.T) {
	bin := filepath.Join(rbeeBinary(t), "rbee")
	ports := testutil.FreePorts(t, 6)
	client := func(i int) string { return fmt.Sprintf("nats://127.0.0.1:%d", ports[i]) }
	route := func(i int) string { return fmt.Sprintf("nats-route://127.0.0.1:%d", ports[3+i]) }
	all := strings.Join([]string{client(0), client(1), client(2)}, ",")

	kill := map[string]func(){}
	outs := map[string]*lines{}
	for i := range 3 {
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, route(j))
			}
		}
		name := fmt.Sprintf("q%d", i+1)
		outs[name], kill[name] = startKillable(t, nil, bin, "queen",
			"--listen", fmt.Sprintf("127.0.0.1:%d", ports[i]),
			"--cluster", fmt.Sprintf("127.0.0.1:%d", ports[3+i]),
			"--routes", strings.Join(routes, ","),
			"--server-name", name,
			"--data", t.TempDir(),
			"--replicas", "3",
			"--http", "off")
	}
	// The workers start with the queens, before any broker listens: they
	// wait for one and connect when it comes up.
	wout := start(t, nil, bin, "worker", "--nats-url", all, "--hive-id", "gpu-node-1",
		"--worker-id", "llama", "--simulate", "3", "--interval", "1s")

	// status reads the registry from any one member.
	status := func(url string) []wire.WorkerEntry {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, "status", "--json", "--nats-url", url).Output()
		if err != nil {
			return nil
		}
		var s struct {
			Workers []wire.WorkerEntry `json:"workers"`
		}
		if json.Unmarshal(out, &s) != nil {
			return nil
		}
		return s.Workers
	}
	for i := range 3 {
		testutil.Eventually(t, 90*time.Second, func() bool { return len(status(client(i))) == 3 },
			"three workers in the registry read through member q%d\nq1:\n%s\nq2:\n%s\nq3:\n%s\nworkers:\n%s", i+1, outs["q1"], outs["q2"], outs["q3"], wout)
	}

	nc := conn(t, all, "observer")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var leader string
	testutil.Eventually(t, 30*time.Second, func() bool {
		for _, b := range []string{"rbee_workers", "rbee_hives"} {
			l, current := streamCluster(js, b)
			if current != 2 { // the replicas other than the leader
				return false
			}
			if b == "rbee_workers" {
				leader = l
			}
		}
		return leader != ""
	}, "both buckets in three current replicas")
	t.Logf("rbee_workers is led by %s; killing that queen and its broker", leader)

	before := map[string]uint64{}
	for _, w := range status(all) {
		before[w.WorkerID] = w.Seq
	}
	kill[leader]()

	var survivors []string
	for i := range 3 {
		if fmt.Sprintf("q%d", i+1) != leader {
			survivors = append(survivors, client(i))
		}
	}
	// Beats go on through the other two members: every worker's entry moves
	// past the seq it had before the kill, and none expired in between.
	testutil.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		ws := status(strings.Join(survivors, ","))
		if len(ws) != 3 {
			return fmt.Errorf("%d workers read through the surviving members, want 3", len(ws))
		}
		for _, w := range ws {
			if w.Seq <= before[w.WorkerID]+2 {
				l, current := streamCluster(js, "rbee_workers")
				return fmt.Errorf("worker %s at seq %d, liveness %q, %d before the kill (rbee_workers led by %q, %d current replicas): "+
					"workers keep beating into the surviving members", w.WorkerID, w.Seq, w.Liveness, before[w.WorkerID], l, current)
			}
		}
		return nil
	})
	l, _ := streamCluster(js, "rbee_workers")
	t.Logf("rbee_workers now led by %s; workers kept beating: seqs before the kill %v", l, before)
}
