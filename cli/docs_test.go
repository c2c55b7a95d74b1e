package cli

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/queen"
)

// flagsOf returns the flags `rbee name -h` lists.
func flagsOf(t *testing.T, name string) []string {
	t.Helper()
	_, out, _ := run(t, context.Background(), "", name, "-h")
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`).FindAllStringSubmatch(out, -1) {
		flags = append(flags, m[1])
	}
	return flags
}

var docFlag = regexp.MustCompile(`--([a-z][a-z0-9-]*[a-z0-9])`)

// TestDocsCLI: every flag docs/cli.md names for a command, in its synopsis
// and in its paragraph, is a flag of that command.
func TestDocsCLI(t *testing.T) {
	b, err := os.ReadFile("../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	_, rest, _ := strings.Cut(doc, "```\n")
	synopsis, rest, _ := strings.Cut(rest, "```")
	texts := map[string]string{} // command → what the page says of it
	cmd := ""
	for _, line := range strings.Split(synopsis, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "rbee" {
			cmd = f[1]
		}
		if cmd != "" && !strings.Contains(line, "(also") {
			texts[cmd] += line + "\n"
		}
	}
	for _, para := range regexp.MustCompile("(?m)^- \\*\\*`rbee ([a-z]+)").FindAllStringSubmatchIndex(rest, -1) {
		name := rest[para[2]:para[3]]
		end := strings.Index(rest[para[1]:], "\n- **")
		if end < 0 {
			end = strings.Index(rest[para[1]:], "\n\n")
		}
		texts[name] += rest[para[0] : para[1]+end]
	}
	if len(texts) < 8 {
		t.Fatalf("docs/cli.md describes %d commands", len(texts))
	}
	for name, text := range texts {
		if name == "help" {
			continue
		}
		if findCommand(name) == nil {
			t.Errorf("docs/cli.md describes rbee %s, which does not exist", name)
			continue
		}
		flags := flagsOf(t, name)
		for _, m := range docFlag.FindAllStringSubmatchIndex(text, -1) {
			if strings.HasSuffix(text[:m[0]], "no `") {
				continue // "takes no --prefix"
			}
			if flag := text[m[2]:m[3]]; !slices.Contains(flags, flag) {
				t.Errorf("docs/cli.md gives rbee %s --%s, which it does not take (it takes %v)", name, flag, flags)
			}
		}
	}
}

// describedMetrics returns the metric names a collector describes.
func describedMetrics(c prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc, 256)
	go func() { c.Describe(ch); close(ch) }()
	var names []string
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		if m := re.FindStringSubmatch(d.String()); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// TestDocsMetrics: docs/metrics.md documents every metric the queen and its
// event history describe, and names none they do not.
func TestDocsMetrics(t *testing.T) {
	b, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| `rbee_") {
			continue
		}
		cell := strings.Split(line, "|")[1]
		for _, m := range regexp.MustCompile("`(rbee_[a-z_]+)").FindAllStringSubmatch(cell, -1) {
			documented[m[1]] = true
		}
	}
	cfg := queen.DefaultConfig()
	q, err := queen.New(testutil.Connect(t, testutil.Server(t).ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, n := range describedMetrics(q.Collector()) {
		served[n] = true
	}
	for _, n := range describedMetrics((*events.Publisher)(nil).Collector()) {
		served[n] = true
	}
	for _, n := range describedMetrics((&httpAPI{q: q}).fleet()) {
		served[n] = true
	}
	for n := range served {
		if !documented[n] {
			t.Errorf("%s is served but not in docs/metrics.md", n)
		}
	}
	for n := range documented {
		if !served[n] {
			t.Errorf("docs/metrics.md documents %s, which the queen does not serve", n)
		}
	}
}
