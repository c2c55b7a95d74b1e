package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/gpu"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/publisher"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// requireChromium returns the path of a Chromium the README's test command
// installs (scripts/tools.sh). Under that command (RBEE_REQUIRE_TOOLS=1) a
// missing browser fails the test; a plain `go test` skips it.
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("RBEE_REQUIRE_TOOLS") != "" {
		t.Fatal("chromium not found on PATH: run ./scripts/test.sh, which installs it")
	}
	t.Skip("chromium not on PATH (./scripts/test.sh installs it)")
	return ""
}

// testOutDir is where the browser test writes its screenshots: $RBEE_TEST_OUT
// if set, else the test's temporary folder.
func testOutDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("RBEE_TEST_OUT")
	if dir == "" {
		return t.TempDir()
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	return dir
}

// queenMarksDisconnected reports whether this queen turns an entry whose
// connection closed without a goodbye `disconnected` before it expires.
func queenMarksDisconnected() bool {
	return slices.Contains(registry.EventTypes, registry.EventType("disconnected"))
}

// page is what the browser shows, read from the DOM.
type page struct {
	Conn     string `json:"conn"`
	Totals   string `json:"totals"`
	Overflow bool   `json:"overflow"` // the page scrolls sideways
	Rows     []struct {
		Key      string `json:"key"`
		Hidden   bool   `json:"hidden"`
		Status   string `json:"status"`
		Liveness string `json:"liveness"`
		Model    string `json:"model"`
		Markup   int    `json:"markup"` // elements inside the model cell
		VRAM     string `json:"vram"`
	} `json:"rows"`
	Hives []struct {
		ID        string   `json:"id"`
		Health    string   `json:"health"`     // the hive's health badge
		GPUs      []string `json:"gpus"`       // each GPU's VRAM label
		GPUBadges []string `json:"gpu_badges"` // each GPU's health, XID, recovery
		Badges    []string `json:"badges"`     // health, XID, recovery
	} `json:"hives"`
	Models []string `json:"models"` // "<model> <ready>/<busy>/<problem>/<other>", in order`
	Queens []string `json:"queens"`
	Events []string `json:"events"` // "<event> <key>", newest first
}

const readPage = `JSON.stringify({
  conn: document.getElementById("conn").dataset.state,
  totals: document.getElementById("totals").textContent,
  overflow: document.documentElement.scrollWidth > document.documentElement.clientWidth,
  rows: [...document.querySelectorAll("#workers tbody tr")].map((r) => ({
    key: r.dataset.key, hidden: r.hidden,
    status: r.querySelector("td.status").textContent,
    liveness: r.querySelector("td.liveness").textContent,
    model: r.querySelector("td.model").textContent,
    markup: r.querySelector("td.model").children.length,
    vram: r.querySelector("td.vram").textContent,
  })),
  hives: [...document.querySelectorAll("#hives .hive")].map((h) => ({
    id: h.dataset.hive, health: h.querySelector(".hive-head .health").textContent,
    gpus: [...h.querySelectorAll(".vram")].map((x) => x.textContent),
    gpu_badges: [...h.querySelectorAll(".gpu .badge")].map((x) => x.textContent),
    badges: [...h.querySelectorAll(".badge")].map((x) => x.textContent),
  })),
  models: [...document.querySelectorAll("#models tbody tr")].map((r) =>
    r.dataset.model + " " + [...r.querySelectorAll("td.n")].map((x) => x.textContent).join("/")),
  queens: [...document.querySelectorAll("#queens .queen")].map((x) => x.textContent),
  events: [...document.querySelectorAll("#events li")].map((li) => li.dataset.event + " " + li.dataset.key),
})`

func (p page) row(key string) (status, liveness string, visible, ok bool) {
	for _, r := range p.Rows {
		if r.Key == key {
			return r.Status, r.Liveness, !r.Hidden, true
		}
	}
	return "", "", false, false
}

// consistent returns an error for a hive whose health badge says healthy
// while one of its GPUs is not (the hive's verdict follows its GPUs).
func (p page) consistent() error {
	for _, h := range p.Hives {
		for _, b := range h.GPUBadges {
			if (b == "degraded" || b == "unhealthy" || strings.HasPrefix(b, "XID")) && h.Health == "healthy" {
				return fmt.Errorf("hive %s shows healthy with a GPU badge %q", h.ID, b)
			}
		}
	}
	return nil
}

func (p page) visible() []string {
	var out []string
	for _, r := range p.Rows {
		if !r.Hidden {
			out = append(out, r.Key)
		}
	}
	return out
}

// browser drives one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
	log *testutil.Buffer
}

func startBrowser(t *testing.T, path string) *browser {
	t.Helper()
	// Chromium at times exits before it serves DevTools when it starts
	// beside other processes (seen once in a few runs of ./cli with ./deploy);
	// a start that fails is tried again, at most startTries times in all, and
	// each failure is logged. What the tests check begins once it runs.
	const startTries = 3
	for try := 1; ; try++ {
		b, err := tryBrowser(t, path)
		if err == nil {
			return b
		}
		if try == startTries {
			t.Fatalf("start chromium, %d tries: %v", try, err)
		}
		t.Logf("start chromium, try %d of %d: %v", try, startTries, err)
	}
}

// tryBrowser starts Chromium once: a browser, or the error and its output.
func tryBrowser(t *testing.T, path string) (*browser, error) {
	log := &testutil.Buffer{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.WindowSize(1280, 800),
		chromedp.CombinedOutput(log),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	// The first run starts the browser, which lives as long as that run's
	// context: it gets none with a deadline, so the wait is bounded here.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	var err error
	select {
	case err = <-started:
	case <-time.After(time.Minute):
		err = errors.New("not started within a minute")
	}
	if err != nil {
		cancelTab()
		cancelAlloc()
		return nil, fmt.Errorf("%w\nchromium output:\n%s", err, log)
	}
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	return &browser{t: t, ctx: ctx, log: log}, nil
}

// run runs steps within timeout, failing the test with the browser's output.
func (b *browser) run(timeout time.Duration, what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v\nchromium output:\n%s", what, err, b.log)
	}
}

// eval evaluates a JavaScript expression whose value is a string.
func (b *browser) eval(expr string) (string, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[string](expr))
}

func (b *browser) read() (page, error) {
	s, err := b.eval(readPage)
	if err != nil {
		return page{}, err
	}
	var p page
	err = json.Unmarshal([]byte(s), &p)
	return p, err
}

// choose sets a filter's select and tells the page, as a user's pick would.
func (b *browser) choose(id, value string) {
	b.t.Helper()
	expr := fmt.Sprintf(`(() => { const s = document.getElementById(%q); s.value = %q; s.dispatchEvent(new Event("change")); return s.value; })()`, id, value)
	if got, err := b.eval(expr); err != nil || got != value {
		b.t.Fatalf("choose %s=%q: got %q, %v", id, value, got, err)
	}
}

// waitPage polls the DOM until cond returns nil or timeout passes, then
// fails with cond's last error and the page as last read.
func (b *browser) waitPage(timeout time.Duration, cond func(page) error) page {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p, err := b.read()
		if err == nil {
			if err = cond(p); err == nil {
				return p
			}
		}
		if time.Now().After(deadline) {
			js, _ := json.MarshalIndent(p, "", "  ")
			b.t.Fatalf("after %s: %v\npage:\n%s", timeout, err, js)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *browser) screenshot(path string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		b.t.Fatalf("screenshot: %v\nchromium output:\n%s", err, b.log)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

// fleetHive beats as a hive with fixed GPUs, so the view has VRAM to draw.
func fleetHive(t *testing.T, url, id string, gpus []wire.GPU) {
	t.Helper()
	nc := testutil.Connect(t, url)
	hc := hive.DefaultConfig(id)
	hc.Interval, hc.Jitter, hc.Hostname, hc.Version = 200*time.Millisecond, 0, id+".lab", "dev"
	hc.Stats = func(b *wire.Hive) {
		b.CPUPercent, b.RAMUsedBytes, b.RAMTotalBytes = 23.5, 96<<30, 512<<30
		b.GPUs = gpus
	}
	h, err := hive.New(nc, hc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Abandon)
}

// agentHive beats as a hive agent that reports the VRAM each of its workers'
// processes hold (published directly: the hive package fills it from NVML).
func agentHive(t *testing.T, url, id string, health wire.Health, reason string, gpus []wire.GPU, workers []wire.HiveWorker) {
	t.Helper()
	nc := testutil.Connect(t, url)
	pc := publisher.DefaultConfig(subjects.Default().Hive(id), wire.SchemaHive)
	pc.Interval, pc.Jitter = 200*time.Millisecond, 0
	p, err := publisher.New(nc, pc, func() *wire.Hive {
		return &wire.Hive{Meta: wire.Meta{Health: health, HealthReason: reason}, HiveID: id, Hostname: id + ".lab", Version: "dev",
			CPUPercent: 41.2, RAMUsedBytes: 210 << 30, RAMTotalBytes: 1024 << 30, GPUs: gpus, Workers: workers}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abandon)
}

func testGPU(index int, name string, usedGiB, totalGiB uint64, util, temp, power float64) wire.GPU {
	used, total := usedGiB<<30, totalGiB<<30
	return wire.GPU{Index: index, UUID: fmt.Sprintf("GPU-%d-%s", index, name), Name: name,
		VRAMUsedBytes: &used, VRAMTotalBytes: &total, UtilPercent: &util, TemperatureC: &temp, PowerW: &power}
}

// fleetWorker beats as a worker on its own connection, returned so that the
// test can drop it without a goodbye.
func fleetWorker(t *testing.T, url, hiveID, id, model, device string, busy int) (*worker.Worker, *nats.Conn) {
	t.Helper()
	nc := testutil.Connect(t, url, nats.ReconnectBufSize(-1))
	c := worker.DefaultConfig(hiveID, id)
	c.Interval, c.Jitter, c.ModelID, c.Device, c.SlotsTotal = 200*time.Millisecond, 0, model, device, 4
	w, err := worker.New(nc, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abandon)
	st := wire.StatusReady
	if busy > 0 {
		st = wire.StatusBusy
	}
	w.SetSlotsBusy(busy)
	if err := w.SetStatus(st, wire.Healthy, ""); err != nil {
		t.Fatal(err)
	}
	return w, nc
}

// TestBrowserLiveView drives the queen's web view in headless Chromium,
// against a real server, queen, HTTP server, hives and workers: the page
// shows the running workers and hives, escapes what senders wrote, filters,
// fits a laptop and a phone, and follows a worker killed without a goodbye
// (disconnected, where the queen marks that) until it expires, without a
// reload. Screenshots go to $RBEE_TEST_OUT or the test's folder.
func TestBrowserLiveView(t *testing.T) {
	chromium := requireChromium(t)
	out := testOutDir(t)
	s := startHTTPSystem(t) // 200 ms beats: a TTL of 1 s
	url := s.srv.ClientURL()

	// A GPU that fell off the bus, as the hive reports it: the GPU's health
	// and recovery action from NVIDIA's Xid catalogue, and the hive degraded
	// with the GPU named (gpu.Apply's verdict).
	xid := 79
	info := gpu.ClassifyXid(xid)
	bad := testGPU(3, "NVIDIA H100 80GB HBM3", 0, 80, 0, 41, 70)
	bad.Health, bad.Xid, bad.XidAtMs, bad.RecoveryAction = info.Health, &xid, time.Now().UnixMilli(), string(info.Action)
	bad.HealthReason = fmt.Sprintf("Xid %d: %s, recovery %s", xid, info.Name, info.Action)
	vram := func(gib uint64) *uint64 { b := gib << 30; return &b }
	now := time.Now().UnixMilli()
	agentHive(t, url, "gpu-node-1", wire.Degraded, "gpu 3: "+bad.HealthReason, []wire.GPU{
		testGPU(0, "NVIDIA H100 80GB HBM3", 71, 80, 97, 71, 612),
		testGPU(1, "NVIDIA H100 80GB HBM3", 76, 80, 88, 68, 580),
		testGPU(2, "NVIDIA H100 80GB HBM3", 40, 80, 35, 52, 240),
		bad,
	}, []wire.HiveWorker{
		{WorkerID: "llama-70b-0", Status: wire.StatusBusy, Health: wire.Healthy, ModelID: "meta-llama/Llama-3.1-70B-Instruct",
			Device: "cuda:0,1", LastSeenMs: now, PID: 4242, VRAMUsedBytes: vram(142), GPUUUIDs: []string{"GPU-0", "GPU-1"}},
		{WorkerID: "qwen-32b-0", Status: wire.StatusBusy, Health: wire.Healthy, ModelID: "Qwen/Qwen2.5-32B-Instruct",
			Device: "cuda:2", LastSeenMs: now, PID: 4243, VRAMUsedBytes: vram(38), GPUUUIDs: []string{"GPU-2"}},
	})
	fleetHive(t, url, "gpu-node-2", []wire.GPU{
		testGPU(0, "NVIDIA L40S", 30, 48, 64, 61, 250),
		testGPU(1, "NVIDIA L40S", 46, 48, 99, 83, 348),
	})
	fleetWorker(t, url, "gpu-node-1", "llama-70b-0", "meta-llama/Llama-3.1-70B-Instruct", "cuda:0,1", 3)
	fleetWorker(t, url, "gpu-node-1", "qwen-32b-0", "Qwen/Qwen2.5-32B-Instruct", "cuda:2", 1)
	fleetWorker(t, url, "gpu-node-2", "mistral-0", "mistralai/Mistral-7B-Instruct-v0.3", "cuda:0", 0)
	fleetWorker(t, url, "gpu-node-2", "mistral-1", "mistralai/Mistral-7B-Instruct-v0.3", "cuda:1", 2)
	// A model name is whatever the sender wrote: shown, never interpreted.
	const markup = `<img src=x onerror="document.title='pwned'"><b>m</b>`
	fleetWorker(t, url, "gpu-node-2", "odd-name", markup, "cpu", 0)
	_, victimConn := fleetWorker(t, url, "gpu-node-2", "victim", "mistralai/Mistral-7B-Instruct-v0.3", "cuda:1", 1)
	all := []string{"gpu-node-1.llama-70b-0", "gpu-node-1.qwen-32b-0", "gpu-node-2.mistral-0",
		"gpu-node-2.mistral-1", "gpu-node-2.odd-name", "gpu-node-2.victim"}

	b := startBrowser(t, chromium)
	b.run(time.Minute, "open the page", chromedp.Navigate("http://"+s.http.Addr()+"/"))
	b.waitPage(30*time.Second, func(p page) error {
		if p.Conn != "live" {
			return fmt.Errorf("connection state %q, want live", p.Conn)
		}
		if got := p.visible(); !slices.Equal(got, all) {
			return fmt.Errorf("workers shown %v, want %v", got, all)
		}
		if len(p.Hives) != 2 || len(p.Hives[0].GPUs) != 4 || len(p.Hives[1].GPUs) != 2 {
			return fmt.Errorf("hives %+v, want gpu-node-1 with 4 GPUs and gpu-node-2 with 2", p.Hives)
		}
		if p.Hives[0].GPUs[0] != "71.0 GiB / 80.0 GiB · 9.0 GiB free" {
			return fmt.Errorf("first GPU's VRAM label %q", p.Hives[0].GPUs[0])
		}
		for _, want := range []string{"degraded", "unhealthy", "XID 79", "recovery: node_reboot"} {
			if !slices.Contains(p.Hives[0].Badges, want) {
				return fmt.Errorf("gpu-node-1 badges %q lack %q", p.Hives[0].Badges, want)
			}
		}
		if err := p.consistent(); err != nil {
			return err
		}
		wantModels := []string{markup + " 1/0/0/0", "Qwen/Qwen2.5-32B-Instruct 0/1/0/0",
			"meta-llama/Llama-3.1-70B-Instruct 0/1/0/0", "mistralai/Mistral-7B-Instruct-v0.3 1/2/0/0"}
		if !slices.Equal(p.Models, wantModels) {
			return fmt.Errorf("models %q, want %q", p.Models, wantModels)
		}
		if want := "queen " + s.q.ID() + ": ok"; !slices.Contains(p.Queens, want) {
			return fmt.Errorf("queens %q lack %q", p.Queens, want)
		}
		for _, r := range p.Rows {
			if r.Key == "gpu-node-1.llama-70b-0" && r.VRAM != "142 GiB" {
				return fmt.Errorf("%s: VRAM %q, want the hive's 142 GiB", r.Key, r.VRAM)
			}
			if r.Key == "gpu-node-2.odd-name" && (r.Model != markup || r.Markup != 0) {
				return fmt.Errorf("model cell holds %q with %d elements: not shown as text", r.Model, r.Markup)
			}
		}
		if p.Overflow {
			return fmt.Errorf("the page scrolls sideways at 1280×800")
		}
		return nil
	})
	if title, err := b.eval("document.title"); err != nil || title != "rbee queen" {
		t.Fatalf("title %q: markup from a model name ran", title)
	}
	b.screenshot(filepath.Join(out, "web-view.png"))

	// Search and filters act at once, without a reload.
	b.run(10*time.Second, "search", chromedp.SendKeys("#q", "mistral"))
	b.waitPage(10*time.Second, func(p page) error {
		want := []string{"gpu-node-2.mistral-0", "gpu-node-2.mistral-1", "gpu-node-2.victim"}
		if got := p.visible(); !slices.Equal(got, want) {
			return fmt.Errorf("search 'mistral' shows %v, want %v", got, want)
		}
		return nil
	})
	b.choose("q", "")
	b.choose("f-status", "busy")
	b.waitPage(10*time.Second, func(p page) error {
		want := []string{"gpu-node-1.llama-70b-0", "gpu-node-1.qwen-32b-0", "gpu-node-2.mistral-1", "gpu-node-2.victim"}
		if got := p.visible(); !slices.Equal(got, want) {
			return fmt.Errorf("status busy shows %v, want %v", got, want)
		}
		return nil
	})
	b.choose("f-status", "")

	// A phone: one column, nothing wider than the screen.
	b.run(10*time.Second, "phone viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	b.waitPage(10*time.Second, func(p page) error {
		if p.Overflow {
			return fmt.Errorf("the page scrolls sideways at 390×844")
		}
		if len(p.visible()) != len(all) {
			return fmt.Errorf("workers shown on the phone: %v", p.visible())
		}
		return nil
	})
	b.screenshot(filepath.Join(out, "web-view-phone.png"))
	b.run(10*time.Second, "laptop viewport", chromedp.EmulateViewport(1280, 800))

	// Kill the victim: its connection closes without a goodbye.
	victimConn.Close()
	const victim = "gpu-node-2.victim"
	if queenMarksDisconnected() {
		b.waitPage(30*time.Second, func(p page) error {
			if _, l, _, ok := p.row(victim); !ok || l != "disconnected" {
				return fmt.Errorf("%s: liveness %q (present %v), want disconnected", victim, l, ok)
			}
			return nil
		})
		b.waitPage(10*time.Second, func(p page) error {
			if !slices.Contains(p.Events, "disconnected "+victim) {
				return fmt.Errorf("no disconnected event for %s in %v", victim, p.Events)
			}
			// Problems first: the disconnected worker tops the table.
			if len(p.Rows) == 0 || p.Rows[0].Key != victim {
				return fmt.Errorf("first row %v, want %s on top", p.Rows, victim)
			}
			if !slices.Contains(p.Models, "mistralai/Mistral-7B-Instruct-v0.3 1/1/1/0") {
				return fmt.Errorf("models %q: want mistral with one problem", p.Models)
			}
			return nil
		})
		b.choose("f-liveness", "not_alive")
		b.waitPage(10*time.Second, func(p page) error {
			if got := p.visible(); !slices.Equal(got, []string{victim}) {
				return fmt.Errorf("not alive shows %v, want %s", got, victim)
			}
			return nil
		})
		b.choose("f-liveness", "")
		b.screenshot(filepath.Join(out, "web-view-disconnected.png"))
	} else {
		t.Log("this queen does not mark closed connections disconnected; checking expiry only")
	}
	b.waitPage(30*time.Second, func(p page) error {
		if _, _, _, ok := p.row(victim); ok {
			return fmt.Errorf("%s still shown", victim)
		}
		if !slices.Contains(p.Events, "expired "+victim) {
			return fmt.Errorf("no expired event for %s in %v", victim, p.Events)
		}
		if got := p.visible(); len(got) != len(all)-1 {
			return fmt.Errorf("workers shown %v, want the other %d", got, len(all)-1)
		}
		if !strings.Contains(p.Totals, "5 workers") {
			return fmt.Errorf("totals %q", p.Totals)
		}
		return nil
	})
	b.screenshot(filepath.Join(out, "web-view-expired.png"))
}

// TestBrowserManyWorkers: with hundreds of workers the page lists every one,
// and the hive, model and status filters and the search narrow the table.
func TestBrowserManyWorkers(t *testing.T) {
	chromium := requireChromium(t)
	s := startHTTPSystem(t)
	const hives, perHive = 10, 30
	nc := testutil.Connect(t, s.srv.ClientURL(), nats.ReconnectBufSize(-1))
	models := []string{"model-a", "model-b", "model-c"}
	for h := range hives {
		for i := range perHive {
			c := worker.DefaultConfig(fmt.Sprintf("h-%02d", h), fmt.Sprintf("w-%02d", i))
			// Long intervals: the test needs presence, not traffic.
			c.Interval, c.ModelID, c.Device, c.SlotsTotal = 10*time.Second, models[i%3], "cuda:0", 2
			w, err := worker.New(nc, c)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(w.Abandon)
			st := wire.StatusReady
			if i%5 == 0 {
				st = wire.StatusDraining
			}
			if err := w.SetStatus(st, wire.Healthy, ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := startBrowser(t, chromium)
	b.run(time.Minute, "open the page", chromedp.Navigate("http://"+s.http.Addr()+"/"))
	count := func(want int, what string) {
		t.Helper()
		b.waitPage(30*time.Second, func(p page) error {
			if n := len(p.visible()); n != want {
				return fmt.Errorf("%s: %d workers shown of %d, want %d", what, n, len(p.Rows), want)
			}
			if p.Overflow {
				return fmt.Errorf("%s: the page scrolls sideways", what)
			}
			return nil
		})
	}
	count(hives*perHive, "all")
	b.choose("f-hive", "h-03")
	count(perHive, "hive h-03")
	b.choose("f-model", "model-b")
	count(perHive/3, "hive h-03, model-b")
	b.choose("f-hive", "")
	b.choose("f-model", "")
	b.choose("f-status", "draining")
	count(hives*perHive/5, "status draining")
	b.choose("f-status", "")
	b.run(10*time.Second, "search", chromedp.SendKeys("#q", "h-07.w-1"))
	count(10, "search h-07.w-1")
}

// TestBrowserWithoutStream: served without the queen's connection (no event
// stream), the page still shows the registry as loaded and says it is not live.
func TestBrowserWithoutStream(t *testing.T) {
	chromium := requireChromium(t)
	s := startHTTPSystem(t)
	fleetWorker(t, s.srv.ClientURL(), "h1", "w1", "m", "cuda:0", 0)
	checkFor(t, 10*time.Second, func() error {
		if n, _ := s.q.Registry().Sizes(); n != 1 {
			return fmt.Errorf("registry has %d workers, want 1", n)
		}
		return nil
	})
	srv := httptest.NewServer(newHTTPHandler(s.q))
	t.Cleanup(srv.Close)
	b := startBrowser(t, chromium)
	b.run(time.Minute, "open the page", chromedp.Navigate(srv.URL+"/"))
	b.waitPage(30*time.Second, func(p page) error {
		if p.Conn != "off" {
			return fmt.Errorf("connection state %q, want off", p.Conn)
		}
		if got := p.visible(); !slices.Equal(got, []string{"h1.w1"}) {
			return fmt.Errorf("workers shown %v, want h1.w1", got)
		}
		return nil
	})
}
