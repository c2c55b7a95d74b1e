package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
)

// TestNatsCLI checks the operator's view with the real `nats` CLI: `nats sub`
// shows readable subjects and the Rbee-Schema header, `--translate 'rbee
// decode'` turns each payload into JSON, and `nats kv watch` shows a PURGE
// when a worker expires and a DELETE when one leaves.
func TestNatsCLI(t *testing.T) {
	natsBin := testutil.RequireTool(t, "nats")
	bin := rbeeBinary(t)
	srv := testutil.Server(t)
	url := srv.ClientURL()
	startQueen(t, url, 2*time.Second)
	nc := conn(t, url, "workers")
	w1 := startWorker(t, nc, "h1", "w1", 200*time.Millisecond)
	w2 := startWorker(t, nc, "h1", "w2", 200*time.Millisecond)
	// An isolated environment: no saved nats contexts, rbee on PATH for --translate.
	env := []string{"HOME=" + t.TempDir(), "PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"), "NATS_CONTEXT="}

	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(natsBin, append([]string{"--server", url}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		done := make(chan struct{})
		var out []byte
		var err error
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("nats %v did not finish: %s", args, out)
		}
		if err != nil {
			t.Fatalf("nats %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	out := run("sub", "rbee.hb.worker.h1.w1", "--count", "2")
	for _, want := range []string{`Received on "rbee.hb.worker.h1.w1"`, "Rbee-Schema: worker/1", "Content-Type: application/msgpack"} {
		if !strings.Contains(out, want) {
			t.Fatalf("nats sub output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("nats sub shows subject and headers")

	out = run("sub", "rbee.hb.>", "--count", "3", "--translate", "rbee decode")
	decoded := 0
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("translated line is not JSON: %q", line)
		}
		for _, k := range []string{"v", "instance_id", "seq", "sent_at_ms", "interval_ms", "health", "hive_id", "worker_id", "status", "model_id", "device", "slots_total"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("translated payload lacks %q: %s", k, line)
			}
		}
		decoded++
	}
	if decoded != 3 {
		t.Fatalf("want 3 decoded payloads, got %d:\n%s", decoded, out)
	}
	t.Logf("nats sub --translate 'rbee decode' printed %d JSON payloads", decoded)

	watch := start(t, env, natsBin, "--server", url, "kv", "watch", "rbee_workers")
	testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(watch.text(), "PUT rbee_workers > h1.w1") }, "kv watch shows puts:\n%s", watch)
	w1.Abandon()
	testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(watch.text(), "PURGE rbee_workers > h1.w1") }, "kv watch shows the expiry as PURGE:\n%s", watch)
	if err := w2.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(watch.text(), "DELETE rbee_workers > h1.w2") }, "kv watch shows the goodbye as DELETE:\n%s", watch)
	t.Logf("nats kv watch showed PURGE on expiry and DELETE on goodbye")
}
