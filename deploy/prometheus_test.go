package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rbee/heartbeat/internal/testutil"
)

func promtool(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(testutil.RequireTool(t, "promtool"), args...)
	cmd.Dir = "prometheus"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

// TestPrometheusRules checks the alert rules and the configuration with
// promtool and runs the rules' unit tests.
func TestPrometheusRules(t *testing.T) {
	promtool(t, "check", "rules", "rbee-alerts.yml")
	promtool(t, "check", "config", "prometheus.yml")
	promtool(t, "test", "rules", "rbee-alerts_test.yml")
}

var (
	alertRe    = regexp.MustCompile(`(?m)^\s*- alert: (\w+)\s*$`)
	runbookRe  = regexp.MustCompile(`runbook_url: "https://github\.com/rbee/heartbeat/blob/main/docs/metrics\.md#([a-z0-9-]+)"`)
	headingRe  = regexp.MustCompile(`(?m)^#{2,4} (.+)$`)
	testNameRe = regexp.MustCompile(`(?m)^\s*alertname: (\w+)\s*\n\s*exp_alerts:(.*)$`)
)

// anchor returns GitHub's anchor of a Markdown heading.
func anchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(h)) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// TestAlertRunbooksAndTests checks that every alert links a runbook section
// that exists in docs/metrics.md, and that the unit tests see every alert
// both firing and quiet.
func TestAlertRunbooksAndTests(t *testing.T) {
	rules, err := os.ReadFile("prometheus/rbee-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("prometheus/rbee-alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range headingRe.FindAllStringSubmatch(string(doc), -1) {
		anchors[anchor(m[1])] = true
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, m := range testNameRe.FindAllStringSubmatch(string(tests), -1) {
		if strings.TrimSpace(m[2]) == "[]" {
			quiet[m[1]] = true
		} else {
			fires[m[1]] = true
		}
	}
	// Split the rules file at each alert, so that each runbook belongs to its alert.
	idx := alertRe.FindAllStringSubmatchIndex(string(rules), -1)
	if len(idx) < 10 {
		t.Fatalf("%d alerts found, want the whole set", len(idx))
	}
	for i, m := range idx {
		name := string(rules[m[2]:m[3]])
		end := len(rules)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		rb := runbookRe.FindStringSubmatch(string(rules[m[0]:end]))
		switch {
		case rb == nil:
			t.Errorf("%s: no runbook_url into docs/metrics.md", name)
		case rb[1] != strings.ToLower(name):
			t.Errorf("%s: runbook anchor %q, want %q", name, rb[1], strings.ToLower(name))
		case !anchors[rb[1]]:
			t.Errorf("%s: docs/metrics.md has no section %q", name, rb[1])
		}
		if !fires[name] {
			t.Errorf("%s: no unit test in which it fires", name)
		}
		if !quiet[name] {
			t.Errorf("%s: no unit test in which it stays quiet", name)
		}
	}
}

// TestDashboardQueries checks that every query of the Grafana dashboard
// parses as PromQL: each becomes a recording rule that promtool checks.
func TestDashboardQueries(t *testing.T) {
	data, err := os.ReadFile("grafana/rbee-fleet.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("rbee-fleet.json: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("rbee-fleet.json: uid %q, %d panels", dash.UID, len(dash.Panels))
	}
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			n++
			q, _ := json.Marshal(tg.Expr) // a JSON string is a YAML string
			fmt.Fprintf(&b, "      - record: rbee_dashboard_query_%d\n        expr: %s\n", n, q)
		}
	}
	if n < 20 {
		t.Fatalf("%d queries in the dashboard", n)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testutil.RequireTool(t, "promtool"), "check", "rules", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the dashboard's queries: %v\n%s", err, out)
	}
}
