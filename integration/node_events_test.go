package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
)

// TestNodeSubscriberEventsAndLiveness runs the Node.js example against a
// queen with event history: it prints each registry value's liveness
// (absent = alive), the registry events, and takes the queen's own beats
// without refusing them.
func TestNodeSubscriberEventsAndLiveness(t *testing.T) {
	node := testutil.RequireTool(t, "node")
	dir, _ := filepath.Abs("../examples/node-subscriber")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@nats-io", "kv")); err != nil {
		if os.Getenv("RBEE_REQUIRE_TOOLS") != "" {
			t.Fatalf("node packages missing in %s: run ./scripts/test.sh", dir)
		}
		t.Skip("node packages not installed (./scripts/test.sh runs npm ci)")
	}
	srv := testutil.Server(t)
	url := srv.ClientURL()
	startHistoryQueen(t, url, 2*time.Second)
	sub := start(t, nil, node, filepath.Join(dir, "subscriber.mjs"), "--nats-url", url)
	testutil.Eventually(t, 20*time.Second, func() bool {
		_, ok := findNode(parseNode(t, sub), func(l nodeLine) bool { return l.Type == "ready" })
		return ok
	}, "node subscriber ready:\n%s", sub)
	w := startWorker(t, conn(t, url, "workers"), "h1", "w1", 100*time.Millisecond)

	type line struct {
		Type     string         `json:"type"`
		Key      string         `json:"key"`
		Op       string         `json:"op"`
		Event    *string        `json:"event"`
		Liveness *string        `json:"liveness"`
		Schema   string         `json:"schema"`
		Source   string         `json:"source"`
		Reason   string         `json:"reason"`
		Payload  map[string]any `json:"payload"`
	}
	lines := func() []line {
		var out []line
		for _, s := range sub.snapshot() {
			var l line
			if json.Unmarshal([]byte(s), &l) == nil {
				out = append(out, l)
			}
		}
		return out
	}
	has := func(match func(line) bool) bool {
		for _, l := range lines() {
			if match(l) {
				return true
			}
		}
		return false
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return has(func(l line) bool {
			return l.Type == "kv" && l.Key == "h1.w1" && l.Op == "PUT" && l.Liveness != nil && *l.Liveness == "alive"
		})
	}, "a PUT with liveness alive:\n%s", sub)
	testutil.Eventually(t, 10*time.Second, func() bool {
		return has(func(l line) bool {
			return l.Type == "event" && l.Key == "h1.w1" && l.Event != nil && *l.Event == "joined" && l.Payload["worker_id"] == "w1"
		})
	}, "the joined event:\n%s", sub)
	if err := w.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return has(func(l line) bool {
			return l.Type == "event" && l.Key == "h1.w1" && l.Event != nil && *l.Event == "left"
		}) &&
			has(func(l line) bool { return l.Type == "kv" && l.Op == "DEL" && l.Key == "h1.w1" && l.Liveness == nil })
	}, "the left event and a DEL without liveness:\n%s", sub)
	testutil.Eventually(t, 20*time.Second, func() bool {
		return has(func(l line) bool { return l.Type == "beat" && l.Schema == "queen/1" })
	}, "the queen's own beat:\n%s", sub)
	for _, l := range lines() {
		if l.Type == "error" {
			t.Fatalf("the subscriber refused something: %+v\n%s", l, sub)
		}
	}
}

// TestNodePackagesSupportStatedNode: every package in the Node example's
// lockfile supports the Node.js its package.json states (npm ci would warn
// EBADENGINE otherwise), and so does the node on this machine.
func TestNodePackagesSupportStatedNode(t *testing.T) {
	var pkg struct {
		Engines map[string]string `json:"engines"`
	}
	var lock struct {
		Packages map[string]struct {
			Version string            `json:"version"`
			Engines map[string]string `json:"engines"`
		} `json:"packages"`
	}
	for file, v := range map[string]any{"package.json": &pkg, "package-lock.json": &lock} {
		b, err := os.ReadFile(filepath.Join("../examples/node-subscriber", file))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	// minMajor reads the major version of ">=20", ">= 22.x", ">=18.0.0".
	minMajor := func(c string) int {
		c = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(c), ">="))
		major, _, _ := strings.Cut(strings.TrimPrefix(c, "v"), ".")
		n, err := strconv.Atoi(strings.TrimSpace(major))
		if err != nil {
			t.Fatalf("engine constraint %q is not >=N", c)
		}
		return n
	}
	stated := minMajor(pkg.Engines["node"])
	for name, p := range lock.Packages {
		if c, ok := p.Engines["node"]; ok && name != "" && minMajor(c) > stated {
			t.Errorf("%s@%s needs node %s; package.json states >=%d", name, p.Version, c, stated)
		}
	}
	if node, err := exec.LookPath("node"); err == nil {
		out, err := exec.Command(node, "--version").Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := minMajor(string(out)); got < stated {
			t.Errorf("node %s on this machine is older than the stated >=%d", out, stated)
		}
	}
}
