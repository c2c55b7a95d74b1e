package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
)

// buildCSubscriber compiles examples/c-subscriber with Debian's libnats-dev
// and libmsgpack-dev (scripts/tools.sh installs them).
func buildCSubscriber(t *testing.T) string {
	t.Helper()
	cc := testutil.RequireTool(t, "cc")
	pc := testutil.RequireTool(t, "pkg-config")
	flags, err := exec.Command(pc, "--cflags", "--libs", "libnats", "msgpack").Output()
	if err != nil {
		if os.Getenv("RBEE_REQUIRE_TOOLS") != "" {
			t.Fatalf("libnats-dev and libmsgpack-dev not installed: run ./scripts/test.sh")
		}
		t.Skip("libnats-dev and libmsgpack-dev not installed (./scripts/test.sh installs them)")
	}
	bin := filepath.Join(t.TempDir(), "rbee-c-subscriber")
	args := append([]string{"-O2", "-Wall", "-Wextra", "-Werror", "-o", bin, "../examples/c-subscriber/subscriber.c"}, strings.Fields(string(flags))...)
	if out, err := exec.Command(cc, append(args, "-lpthread")...).CombinedOutput(); err != nil {
		t.Fatalf("build the C subscriber: %v\n%s", err, out)
	}
	return bin
}

// TestCSubscriber runs the C example against a live system: it decodes
// beats and events, and tells an expiry (a TTL marker in the bucket's
// stream) from a goodbye, which nats.c's KV API cannot.
func TestCSubscriber(t *testing.T) {
	bin := buildCSubscriber(t)
	srv := testutil.Server(t)
	url := srv.ClientURL()
	startHistoryQueen(t, url, 2*time.Second)
	sub := start(t, nil, bin, "--nats-url", url)
	testutil.Eventually(t, 20*time.Second, func() bool { return strings.Contains(sub.text(), "ready") }, "C subscriber ready:\n%s", sub)
	nc := conn(t, url, "workers")
	killed := startWorker(t, nc, "h1", "killed", 100*time.Millisecond)
	graceful := startWorker(t, nc, "h1", "graceful", 100*time.Millisecond)
	for _, want := range []string{"beat worker h1.killed seq=", "kv PUT rbee_workers h1.killed liveness=alive", "event joined h1.graceful", "beat queen "} {
		testutil.Eventually(t, 20*time.Second, func() bool { return strings.Contains(sub.text(), want) }, "C subscriber prints %q:\n%s", want, sub)
	}
	killed.Abandon()
	if err := graceful.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kv DEL rbee_workers h1.graceful left", "kv PURGE rbee_workers h1.killed expired reason=", "event expired h1.killed", "event left h1.graceful"} {
		testutil.Eventually(t, 20*time.Second, func() bool { return strings.Contains(sub.text(), want) }, "C subscriber prints %q:\n%s", want, sub)
	}
	if strings.Contains(sub.text(), "kv PURGE rbee_workers h1.graceful expired") {
		t.Fatalf("a goodbye's delete marker ageing out read as an expiry:\n%s", sub)
	}
	for _, l := range sub.snapshot() {
		if strings.HasPrefix(l, "error") {
			t.Fatalf("the C subscriber refused something: %q\n%s", l, sub)
		}
	}
}
