package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// waitFor polls check until it returns nil or timeout passes, then fails
// with check's last error.
func waitFor(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTermSafe(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"},
		{"unicode kept", "Grüße 日本 ✓", "Grüße 日本 ✓"},
		{"escape sequence", "a\x1b[2Jb", `a\x1b[2Jb`},
		{"osc title", "\x1b]0;pwned\x07", `\x1b]0;pwned\x07`},
		{"newline tab cr", "a\nb\tc\rd", `a\x0ab\x09c\x0dd`},
		{"del", "a\x7fb", `a\x7fb`},
		{"c1 csi", "a\u009b31mb", `a\x9b31mb`},
		{"bidi override", "abc\u202edcba", `abc\u202edcba`},
		{"zero width", "a\u200bb", `a\u200bb`},
		{"line separator", "a\u2028b", `a\u2028b`},
		{"invalid utf8", "a\xffb", `a\xffb`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := termSafe(tt.in); got != tt.want {
				t.Fatalf("termSafe(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// unsafeBytes reports the first byte of s a terminal would act on.
func unsafeBytes(s string) error {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\n') || c == 0x7f {
			return fmt.Errorf("raw control byte %#x at %d in:\n%q", c, i, s)
		}
	}
	if strings.ContainsRune(s, '\u202e') || strings.ContainsRune(s, '\u009b') {
		return fmt.Errorf("raw bidi or C1 character in:\n%q", s)
	}
	return nil
}

// registryJS returns a JetStream handle on url and the registry buckets.
func registryJS(t *testing.T, url string) (js jetstream.JetStream, workers, hives jetstream.KeyValue) {
	t.Helper()
	js, err := jetstream.New(testutil.Connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if workers, err = js.KeyValue(ctx, "rbee_workers"); err != nil {
		t.Fatal(err)
	}
	if hives, err = js.KeyValue(ctx, "rbee_hives"); err != nil {
		t.Fatal(err)
	}
	return js, workers, hives
}

func put(t *testing.T, kv jetstream.KeyValue, key string, v any) {
	t.Helper()
	b, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), key, b); err != nil {
		t.Fatal(err)
	}
}

func workerEntry(hive, id, model string, st wire.Status) *wire.WorkerEntry {
	w := &wire.WorkerEntry{}
	w.Stamp("i-"+id, 1, time.Now().UnixMilli(), 1000)
	w.HiveID, w.WorkerID, w.ModelID, w.Status, w.Health, w.Device, w.SlotsTotal = hive, id, model, st, wire.Healthy, "cuda:0", 2
	w.ReceivedAtMs, w.FirstSeenMs = time.Now().UnixMilli(), time.Now().UnixMilli()
	return w
}

func hiveEntry(id string, gpus int) *wire.HiveEntry {
	h := &wire.HiveEntry{}
	h.Stamp("i-"+id, 1, time.Now().UnixMilli(), 1000)
	h.HiveID, h.Hostname, h.Health, h.RAMTotalBytes, h.RAMUsedBytes = id, id+".example", wire.Healthy, 2<<40, 1<<40
	h.ReceivedAtMs, h.FirstSeenMs = time.Now().UnixMilli(), time.Now().UnixMilli()
	for i := range gpus {
		used, total, util, temp, power := uint64(20<<30), uint64(80<<30), 42.0, 51.0, 350.0
		h.GPUs = append(h.GPUs, wire.GPU{Index: i, UUID: fmt.Sprintf("GPU-%08d-aaaa-bbbb-cccc-dddddddddddd", i), Name: "NVIDIA H100 80GB HBM3",
			VRAMUsedBytes: &used, VRAMTotalBytes: &total, UtilPercent: &util, TemperatureC: &temp, PowerW: &power, Health: wire.Healthy})
	}
	return h
}

// statusOut runs rbee status with args and returns stdout, failing on a
// non-zero exit.
func statusOut(t *testing.T, url string, args ...string) string {
	t.Helper()
	code, out, stderr := run(t, context.Background(), "", append([]string{"status", "--nats-url", url}, args...)...)
	if code != 0 {
		t.Fatalf("status %v: exit %d: %s", args, code, stderr)
	}
	return out
}

// workerRows returns the "<hive>.<worker>" of each worker row of a status table.
func workerRows(out string) []string {
	_, tbl, _ := strings.Cut(out, "WORKERS (")
	var rows []string
	for _, l := range strings.Split(tbl, "\n")[2:] {
		f := strings.Fields(l)
		if len(f) > 2 {
			rows = append(rows, f[1]+"."+f[0])
		}
	}
	return rows
}

// TestStatusFilters filters by hive, model and status, in tables and JSON;
// a bad filter is a usage error.
func TestStatusFilters(t *testing.T) {
	url, _ := system(t, time.Minute)
	_, wkv, hkv := registryJS(t, url)
	put(t, wkv, "h1.w1", workerEntry("h1", "w1", "model-a", wire.StatusReady))
	put(t, wkv, "h1.w2", workerEntry("h1", "w2", "model-b", wire.StatusBusy))
	put(t, wkv, "h2.w1", workerEntry("h2", "w1", "model-a", wire.StatusBusy))
	put(t, hkv, "h1", hiveEntry("h1", 1))
	put(t, hkv, "h2", hiveEntry("h2", 1))

	tests := []struct {
		args  []string
		want  string
		hives string
	}{
		{nil, "[h1.w1 h1.w2 h2.w1]", "HIVES (2)"},
		{[]string{"--hive", "h1"}, "[h1.w1 h1.w2]", "HIVES (1)"},
		{[]string{"--model", "model-a"}, "[h1.w1 h2.w1]", "HIVES (2)"},
		{[]string{"--status", "busy"}, "[h1.w2 h2.w1]", "HIVES (2)"},
		{[]string{"--status", "ready,draining"}, "[h1.w1]", "HIVES (2)"},
		{[]string{"--status", "busy", "--model", "model-a", "--hive", "h2"}, "[h2.w1]", "HIVES (1)"},
		{[]string{"--model", "none"}, "[]", "HIVES (2)"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out := ""
			waitFor(t, 5*time.Second, func() error {
				out = statusOut(t, url, tt.args...)
				if got := fmt.Sprint(workerRows(out)); got != tt.want {
					return fmt.Errorf("workers %s, want %s:\n%s", got, tt.want, out)
				}
				return nil
			})
			if !strings.Contains(out, tt.hives) {
				t.Fatalf("want %s:\n%s", tt.hives, out)
			}
		})
	}
	var got struct {
		Workers []wire.WorkerEntry `json:"workers"`
		Hives   []wire.HiveEntry   `json:"hives"`
	}
	if err := json.Unmarshal([]byte(statusOut(t, url, "--json", "--hive", "h2")), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Workers) != 1 || got.Workers[0].HiveID != "h2" || len(got.Hives) != 1 || got.Hives[0].HiveID != "h2" {
		t.Fatalf("--json --hive h2: %+v", got)
	}
	for _, args := range [][]string{{"--status", "sleeping"}, {"--hive", "a.b"}} {
		code, _, stderr := run(t, context.Background(), "", append([]string{"status", "--nats-url", url}, args...)...)
		if code != 2 || strings.Count(stderr, "\n") != 1 {
			t.Fatalf("status %v: exit %d, stderr %q; want 2 and one line", args, code, stderr)
		}
	}
}

// TestStatusEightGPUs keeps a hive with 8 GPUs readable: each GPU on its own
// line with its free VRAM, no line past 132 characters.
func TestStatusEightGPUs(t *testing.T) {
	url, _ := system(t, time.Minute)
	_, wkv, hkv := registryJS(t, url)
	h := hiveEntry("gpu-node-1", 8)
	h.Health, h.HealthReason = wire.Degraded, "gpu 3 hot"
	h.GPUs[3].Health, h.GPUs[3].HealthReason = wire.Degraded, "thermal slowdown"
	xid := 79
	h.GPUs[5].Xid, h.GPUs[5].RecoveryAction = &xid, "node_reboot"
	put(t, hkv, "gpu-node-1", h)
	w := workerEntry("gpu-node-1", "llama-0", "meta-llama/Llama-3.1-8B-Instruct", wire.StatusReady)
	w.Health, w.HealthReason = wire.Degraded, "kv cache 97% full"
	put(t, wkv, "gpu-node-1.llama-0", w)
	out := ""
	waitFor(t, 5*time.Second, func() error {
		out = statusOut(t, url)
		if !strings.Contains(out, "HIVES (1)") || !strings.Contains(out, "WORKERS (1)") {
			return fmt.Errorf("not loaded:\n%s", out)
		}
		return nil
	})
	gpuLines := 0
	for _, l := range strings.Split(out, "\n") {
		if len(l) > 132 {
			t.Errorf("line of %d characters:\n%s", len(l), l)
		}
		if strings.HasPrefix(strings.TrimSpace(l), "gpu ") {
			gpuLines++
			if !strings.Contains(l, "free 60.0 of 80.0 GiB") {
				t.Errorf("gpu line lacks its free VRAM: %q", l)
			}
		}
	}
	if gpuLines != 8 {
		t.Errorf("%d gpu lines, want 8:\n%s", gpuLines, out)
	}
	for _, want := range []string{"gpu 3 hot", "thermal slowdown", "kv cache 97% full", "LIVENESS", "xid 79", "recovery node_reboot"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("status:\n%s", out)
	}
}

// TestStatusLivenessAndQueens shows the LIVENESS column (absent = alive) and
// the queens' own state.
func TestStatusLivenessAndQueens(t *testing.T) {
	url, _ := system(t, time.Minute)
	js, wkv, _ := registryJS(t, url)
	put(t, wkv, "h1.alive", workerEntry("h1", "alive", "m", wire.StatusReady))
	d := workerEntry("h1", "gone", "m", wire.StatusBusy)
	d.Liveness, d.LivenessSinceMs = wire.LivenessDisconnected, time.Now().UnixMilli()
	put(t, wkv, "h1.gone", d)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qkv, err := js.KeyValue(ctx, "rbee_queens")
	if err != nil {
		if qkv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "rbee_queens"}); err != nil {
			t.Fatal(err)
		}
	}
	q := &wire.QueenEntry{}
	q.QueenID, q.State, q.Reason, q.Backlog, q.Entries, q.Version = "queen-1", wire.QueenDegraded, "store slow", 17, 2, "9.9.9"
	q.ReceivedAtMs = time.Now().UnixMilli()
	put(t, qkv, "queen-1", q)
	out := ""
	waitFor(t, 5*time.Second, func() error {
		out = statusOut(t, url)
		if !strings.Contains(out, "WORKERS (2)") {
			return fmt.Errorf("not loaded:\n%s", out)
		}
		return nil
	})
	row := func(id string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, id+" ") {
				return l
			}
		}
		t.Fatalf("no row %s:\n%s", id, out)
		return ""
	}
	if !strings.Contains(row("alive"), " alive ") || !strings.Contains(row("gone"), " disconnected ") {
		t.Fatalf("liveness column:\n%s", out)
	}
	if r := row("queen-1"); !strings.Contains(r, "degraded") || !strings.Contains(r, "store slow") || !strings.Contains(r, "17") {
		t.Fatalf("queen row %q:\n%s", r, out)
	}
}

// TestStatusAndWatchEscape: a model name and a health reason with terminal
// escapes, accepted from a real worker, are never printed raw.
func TestStatusAndWatchEscape(t *testing.T) {
	url, q := system(t, 5*time.Second)
	var out, errOut testutil.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() { done <- Main(ctx, []string{"watch", "--nats-url", url}, strings.NewReader(""), &out, &errOut) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, func() error {
		if !strings.Contains(out.String(), "watching") {
			return fmt.Errorf("no banner: %q %q", out.String(), errOut.String())
		}
		return nil
	})
	c := worker.DefaultConfig("h1", "evil")
	c.Interval, c.ModelID, c.Device = 100*time.Millisecond, "m\x1b[2J\x1b]0;pwned\x07", "cuda:0\u202e"
	w, err := worker.New(testutil.Connect(t, url), c)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	_ = w.SetStatus(wire.StatusReady, wire.Degraded, "oom\r\x1b[1Aall good")
	waitFor(t, 5*time.Second, func() error {
		if n, _ := q.Registry().Sizes(); n != 1 {
			return fmt.Errorf("%d workers", n)
		}
		return nil
	})
	st := statusOut(t, url)
	if err := unsafeBytes(st); err != nil {
		t.Fatalf("status: %v", err)
	}
	if !strings.Contains(st, `m\x1b[2J\x1b]0;pwned\x07`) {
		t.Fatalf("status does not show the escaped model:\n%s", st)
	}
	waitFor(t, 5*time.Second, func() error {
		if !strings.Contains(out.String(), "joined") {
			return fmt.Errorf("no joined line: %q", out.String())
		}
		return unsafeBytes(out.String())
	})
	if err := unsafeBytes(out.String()); err != nil {
		t.Fatalf("watch: %v", err)
	}
}

// historySystem is a queen whose events go to the event stream.
func historySystem(t *testing.T) (string, *queen.Queen) {
	t.Helper()
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := events.EnsureStream(ctx, js, subjects.Default(), events.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	p, err := events.NewPublisher(js, events.DefaultConfig("queen-t"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(context.Background()) })
	qc := queen.DefaultConfig()
	qc.OnEvent = p.OnEvent
	q, err := queen.New(nc, qc)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Stop(context.Background()) })
	return srv.ClientURL(), q
}

// eventLines returns "<event> <key>" of each JSON line of out.
func eventLines(t *testing.T, out string) []string {
	t.Helper()
	var got []string
	s := bufio.NewScanner(strings.NewReader(out))
	for s.Scan() {
		var ev wire.Event
		if err := json.Unmarshal(s.Bytes(), &ev); err != nil {
			t.Fatalf("not a JSON event: %q", s.Text())
		}
		got = append(got, ev.Event+" "+ev.Key)
	}
	return got
}

// TestEventsCommand answers what happened to a machine: its events since a
// time, as lines and as JSON, and nothing for another hive.
func TestEventsCommand(t *testing.T) {
	url, _ := historySystem(t)
	w := beatingWorker(t, url, "h1", "w1", 100*time.Millisecond)
	beatingWorker(t, url, "h2", "w1", 100*time.Millisecond)
	waitFor(t, 10*time.Second, func() error {
		_, out, _ := run(t, context.Background(), "", "events", "--nats-url", url, "--json")
		if got := fmt.Sprint(eventLines(t, out)); !strings.Contains(got, "joined h1.w1") || !strings.Contains(got, "joined h2.w1") {
			return fmt.Errorf("events: %s", got)
		}
		return nil
	})
	if err := w.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		code, out, stderr := run(t, context.Background(), "", "events", "--nats-url", url, "--hive", "h1", "--since", "1h", "--json")
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, stderr)
		}
		if got := fmt.Sprint(eventLines(t, out)); got != "[joined h1.w1 left h1.w1]" {
			return fmt.Errorf("events --hive h1: %s", got)
		}
		return nil
	})
	code, out, stderr := run(t, context.Background(), "", "events", "--nats-url", url, "--hive", "h1")
	if code != 0 || !strings.Contains(out, "joined") || !strings.Contains(out, "left") || !strings.Contains(out, "h1.w1") || strings.Contains(out, "h2.w1") {
		t.Fatalf("events table: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, _ := run(t, context.Background(), "", "events", "--nats-url", url, "--hive", "h3", "--json"); code != 0 || out != "" {
		t.Fatalf("another hive: exit %d %q", code, out)
	}
	if code, out, _ := run(t, context.Background(), "", "events", "--nats-url", url, "--since", "2099-01-01T00:00:00Z"); code != 0 || out != "" {
		t.Fatalf("since the future: exit %d %q", code, out)
	}
	for _, args := range [][]string{{"--since", "yesterday"}, {"--hive", "a*"}} {
		if code, _, stderr := run(t, context.Background(), "", append([]string{"events", "--nats-url", url}, args...)...); code != 2 {
			t.Fatalf("events %v: exit %d %s", args, code, stderr)
		}
	}
	srv := testutil.Server(t)
	if code, _, stderr := run(t, context.Background(), "", "events", "--nats-url", srv.ClientURL()); code != 1 || !strings.Contains(stderr, "no event history") {
		t.Fatalf("no stream: exit %d %q", code, stderr)
	}
}

// TestWatchSince replays the history, says so, then follows new events.
func TestWatchSince(t *testing.T) {
	url, _ := historySystem(t)
	w := beatingWorker(t, url, "h1", "old", 100*time.Millisecond)
	waitFor(t, 10*time.Second, func() error {
		_, out, _ := run(t, context.Background(), "", "events", "--nats-url", url, "--json")
		if !strings.Contains(out, `"key":"h1.old"`) {
			return fmt.Errorf("no history yet: %q", out)
		}
		return nil
	})
	w.Abandon()
	var out, errOut testutil.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- Main(ctx, []string{"watch", "--nats-url", url, "--since", "1h", "--json"}, strings.NewReader(""), &out, &errOut)
	}()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(errOut.String(), "history replayed") || !strings.Contains(out.String(), `"key":"h1.old"`) {
			return fmt.Errorf("replay: stdout %q stderr %q", out.String(), errOut.String())
		}
		return nil
	})
	beatingWorker(t, url, "h1", "new", 100*time.Millisecond)
	waitFor(t, 10*time.Second, func() error {
		got := fmt.Sprint(eventLines(t, out.String()))
		if !strings.Contains(got, "joined h1.old") || !strings.Contains(got, "expired h1.old") || !strings.Contains(got, "joined h1.new") {
			return fmt.Errorf("watch --since: %s (stderr %q)", got, errOut.String())
		}
		return nil
	})
}

// TestCheck holds the exit codes of rbee check: 0 present and alive, 1 not,
// 2 bad input, each with one line.
func TestCheck(t *testing.T) {
	url, _ := system(t, time.Minute)
	_, wkv, hkv := registryJS(t, url)
	put(t, wkv, "h1.w1", workerEntry("h1", "w1", "m", wire.StatusReady))
	a := workerEntry("h1", "w2", "m", wire.StatusReady)
	a.Liveness = wire.LivenessAlive
	put(t, wkv, "h1.w2", a)
	s := workerEntry("h1", "stuck", "m", wire.StatusBusy)
	s.Liveness, s.LivenessSinceMs = wire.LivenessStalled, time.Now().Add(-time.Minute).UnixMilli()
	put(t, wkv, "h1.stuck", s)
	put(t, hkv, "h1", hiveEntry("h1", 0))
	d := hiveEntry("h2", 0)
	d.Liveness = wire.LivenessDisconnected
	put(t, hkv, "h2", d)
	put(t, wkv, "h1.gone", workerEntry("h1", "gone", "m", wire.StatusReady))
	if err := wkv.Delete(context.Background(), "h1.gone"); err != nil {
		t.Fatal(err)
	}
	srv := testutil.Server(t)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"worker alive", []string{"worker", "h1.w1"}, 0, "worker h1.w1 is alive"},
		{"liveness alive", []string{"worker", "h1.w2"}, 0, "is alive"},
		{"flags after", []string{"worker", "h1.w1", "--log-level", "error"}, 0, "is alive"},
		{"hive alive", []string{"hive", "h1"}, 0, "hive h1 is alive"},
		{"stalled", []string{"worker", "h1.stuck"}, 1, "worker h1.stuck is stalled"},
		{"hive disconnected", []string{"hive", "h2"}, 1, "hive h2 is disconnected"},
		{"left", []string{"worker", "h1.gone"}, 1, "not in the registry"},
		{"never", []string{"hive", "h9"}, 1, "not in the registry"},
		{"no registry", []string{"worker", "h1.w1", "--nats-url", srv.ClientURL()}, 1, "is a queen running"},
		{"no key dot", []string{"worker", "h1"}, 2, "invalid registry key"},
		{"bad hive", []string{"hive", "h.1"}, 2, "invalid id"},
		{"bad kind", []string{"drone", "q"}, 2, "want worker, hive or queen"},
		{"bad queen address", []string{"queen", "q"}, 2, "want the queen's --http address host:port"},
		{"no queen answers", []string{"queen", "127.0.0.1:1"}, 1, "queen at 127.0.0.1:1 does not answer"},
		{"missing", []string{"worker"}, 2, "want 'worker"},
		{"too many", []string{"hive", "h1", "h2"}, 2, "want 'worker"},
		{"bad flag", []string{"hive", "h1", "--nope"}, 2, "not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"check", "--nats-url", url}, tt.args...)
			code, out, stderr := run(t, context.Background(), "", args...)
			text := out + stderr
			if code != tt.code || !strings.Contains(text, tt.want) {
				t.Fatalf("%v: exit %d, output %q; want exit %d with %q", tt.args, code, text, tt.code, tt.want)
			}
			if tt.code != 2 && strings.Count(text, "\n") != 1 {
				t.Fatalf("want one line, got %q", text)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, stderr := run(t, context.Background(), "", args...)
		if code != 0 || !strings.HasPrefix(out, "rbee "+Version) || strings.Count(out, "\n") != 1 {
			t.Fatalf("%v: exit %d out %q err %q", args, code, out, stderr)
		}
	}
}

// TestHelp: every command's -h has its description, usage and examples on
// stdout (stderr stays empty), never Go's bare "Usage of".
func TestHelp(t *testing.T) {
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			code, out, stderr := run(t, context.Background(), "", c.name, "-h")
			text := out
			if code != 0 || stderr != "" || strings.Contains(text, "Usage of") || !strings.Contains(text, c.summary) || !strings.Contains(text, "usage: rbee "+c.name) {
				t.Fatalf("exit %d:\n%s\nstderr:\n%s", code, text, stderr)
			}
			if c.name != "version" && !strings.Contains(text, "examples:") {
				t.Fatalf("no examples:\n%s", text)
			}
			_, viaHelp, _ := run(t, context.Background(), "", "help", c.name)
			_, _, direct := run(t, context.Background(), "", c.name, "-h")
			if viaHelp+direct == "" {
				t.Fatal("rbee help <command> printed nothing")
			}
		})
	}
}

// fakeOldServer accepts NATS clients as nats-server 2.9 would (INFO, PONG)
// and ignores everything else.
func fakeOldServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, `INFO {"server_id":"NFAKE","server_name":"old","version":"2.9.25","proto":1,"go":"go1.19","host":"127.0.0.1","port":%d,"headers":true,"max_payload":1048576,"jetstream":true}`+"\r\n", port)
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "PING") {
						fmt.Fprint(c, "PONG\r\n")
					}
				}
			}()
		}
	}()
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// TestOldServer names the minimum server version instead of asking whether
// a queen runs.
func TestOldServer(t *testing.T) {
	url := fakeOldServer(t)
	for _, args := range [][]string{{"status"}, {"watch"}, {"events"}, {"check", "hive", "h1"}} {
		code, _, stderr := run(t, context.Background(), "", append(args, "--nats-url", url)...)
		if code != 1 || !strings.Contains(stderr, "2.9.25") || !strings.Contains(stderr, "needs nats-server 2.11") || strings.Contains(stderr, "queen running") {
			t.Fatalf("%v: exit %d %q", args, code, stderr)
		}
	}
}

// TestWrongIdentity: status and watch with an identity that may not use the
// JetStream API exit with the permissions violation, not a timeout or a hang.
func TestWrongIdentity(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		Users: []*server.User{
			{Username: "admin", Password: "a"},
			{Username: "nojs", Password: "p", Permissions: &server.Permissions{
				Publish: &server.SubjectPermission{Allow: []string{"rbee.>"}}}},
			{Username: "noinbox", Password: "p", Permissions: &server.Permissions{
				Subscribe: &server.SubjectPermission{Allow: []string{"rbee.>"}}}},
		}}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	addr := s.Addr().(*net.TCPAddr)
	admin := fmt.Sprintf("nats://admin:a@127.0.0.1:%d", addr.Port)
	q, err := queen.New(testutil.Connect(t, admin), queen.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Stop(context.Background()) })
	for _, user := range []string{"nojs", "noinbox"} {
		for _, cmd := range []string{"watch", "status", "events", "check"} {
			t.Run(user+" "+cmd, func(t *testing.T) {
				args := []string{cmd, "--nats-url", fmt.Sprintf("nats://%s:p@127.0.0.1:%d", user, addr.Port)}
				if cmd == "check" {
					args = append(args, "hive", "h1")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				code, _, stderr := run(t, ctx, "", args...)
				if code != 1 || !strings.Contains(stderr, "permissions violation") || strings.Count(stderr, "\n") != 1 {
					t.Fatalf("exit %d, stderr %q; want 1 with the permissions violation", code, stderr)
				}
			})
		}
	}
}

func TestFormatQueenEvent(t *testing.T) {
	q := &wire.QueenEntry{}
	q.QueenID, q.State, q.Reason, q.Entries = "q1", wire.QueenDisrupted, "30% expired\x1b[2J", 12
	line := formatEvent(registry.Event{Type: registry.Updated, Kind: "queen", Key: "q1", QueenID: "q1", At: time.Now(), Queen: q, Previous: "ok"})
	for _, want := range []string{"updated", "queen", "q1", "state=disrupted", "entries=12", "(was ok)", `\x1b[2J`} {
		if !strings.Contains(line, want) {
			t.Fatalf("%q lacks %q", line, want)
		}
	}
	if err := unsafeBytes(line); err != nil {
		t.Fatal(err)
	}
}
