package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/wire"
)

// metricRe finds the metric names in a PromQL expression: the project's own
// (rbee_), the process and Go collectors', and Prometheus's up.
var metricRe = regexp.MustCompile(`\b(rbee_[a-z0-9_]+|process_[a-z0-9_]+|go_[a-z0-9_]+)\b`)

// servedNames scrapes url's /metrics and returns every metric name in it,
// histogram and summary series names included.
func servedNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for n, f := range fams {
		names[n] = true
		if len(f.GetMetric()) > 0 && f.GetMetric()[0].GetHistogram() != nil {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[n+s] = true
			}
		}
	}
	return names
}

// startQueenCommand runs `rbee queen` with its embedded broker and HTTP API
// on free ports until the test ends, and returns the broker's and the HTTP
// API's URLs once it accepts heartbeats.
func startQueenCommand(t *testing.T) (natsURL, httpURL string) {
	t.Helper()
	ports := testutil.FreePorts(t, 2)
	natsURL, httpURL, _ = startQueenOn(t, t.TempDir(), ports[0], ports[1])
	return natsURL, httpURL
}

// startQueenOn runs `rbee queen` on data dir and the given ports until stop
// is called or the test ends; stop waits for it to exit.
func startQueenOn(t *testing.T, dir string, natsPort, httpPort int) (natsURL, httpURL string, stop func()) {
	t.Helper()
	ports := []int{natsPort, httpPort}
	ctx, cancel := context.WithCancel(context.Background())
	var out testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"queen", "--data", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]),
			"--http", fmt.Sprintf("127.0.0.1:%d", ports[1])}, strings.NewReader(""), &out, &out)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("rbee queen exit %d on stop: %s", code, out.String())
			}
		})
	}
	t.Cleanup(stop)
	checkFor(t, 30*time.Second, func() error {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("rbee queen exited %d: %s", code, out.String())
		default:
		}
		if !strings.Contains(out.String(), "http api ready") {
			return fmt.Errorf("rbee queen not ready: %s", out.String())
		}
		return nil
	})
	return fmt.Sprintf("nats://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1]), stop
}

// TestDeployMetricNames runs `rbee queen` with a hive whose GPU has taken an
// Xid and a worker, scrapes its /metrics, and checks that every metric a
// Grafana panel or an alert rule queries is served: a panel querying a
// metric nobody exports fails.
func TestDeployMetricNames(t *testing.T) {
	url, httpURL := startQueenCommand(t)
	xid := 79
	used, total, util, temp, power := uint64(30<<30), uint64(80<<30), 50.0, 60.0, 300.0
	fleetHive(t, url, "gpu-1", []wire.GPU{{Index: 0, UUID: "GPU-0", Name: "H100", VRAMUsedBytes: &used, VRAMTotalBytes: &total,
		UtilPercent: &util, TemperatureC: &temp, PowerW: &power, Health: wire.Unhealthy, HealthReason: "Xid 79",
		Xid: &xid, XidAtMs: time.Now().UnixMilli(), RecoveryAction: "node_reboot"}})
	beatingWorker(t, url, "gpu-1", "w1", 100*time.Millisecond)
	var names map[string]bool
	checkFor(t, 20*time.Second, func() error {
		names = servedNames(t, httpURL)
		for _, n := range []string{"rbee_gpu_last_xid", "rbee_workers", "rbee_queen_peers"} {
			if !names[n] {
				return fmt.Errorf("%s not served yet", n)
			}
		}
		return nil
	})

	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	data, err := os.ReadFile("../deploy/grafana/rbee-fleet.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("rbee-fleet.json: %v", err)
	}
	queried := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			ms := metricRe.FindAllString(tg.Expr, -1)
			if len(ms) == 0 {
				t.Errorf("panel %q: %q queries no rbee metric", p.Title, tg.Expr)
			}
			for _, m := range ms {
				queried++
				if !names[m] {
					t.Errorf("panel %q queries %s, which the queen does not serve", p.Title, m)
				}
			}
		}
	}
	rules, err := os.ReadFile("../deploy/prometheus/rbee-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(rules), "\n") {
		if e, ok := strings.CutPrefix(strings.TrimSpace(line), "expr:"); ok {
			for _, m := range metricRe.FindAllString(e, -1) {
				queried++
				if !names[m] {
					t.Errorf("alert expression %q queries %s, which the queen does not serve", strings.TrimSpace(e), m)
				}
			}
		}
	}
	if queried < 40 {
		t.Errorf("only %d metric references found in the dashboard and rules", queried)
	}
	if t.Failed() {
		served := make([]string, 0, len(names))
		for n := range names {
			if strings.HasPrefix(n, "rbee_") {
				served = append(served, n)
			}
		}
		slices.Sort(served)
		t.Logf("served: %s", strings.Join(served, " "))
	}
}
