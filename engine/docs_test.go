package engine

import (
	"os"
	"strings"
	"testing"
)

// TestDocsEngines: docs/engines.md gives, for every preset, the kind's
// command line and the health path and metric names the probe reads.
func TestDocsEngines(t *testing.T) {
	b, err := os.ReadFile("../docs/engines.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, k := range Kinds {
		if !strings.Contains(doc, "--engine "+string(k)) {
			t.Errorf("docs/engines.md has no command line with --engine %s", k)
		}
		if k == Generic {
			continue
		}
		s, err := Preset(k)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{s.HealthPath, s.Running, s.Waiting, s.Progress} {
			// A name may stand alone or with its label selector: `name` or `name{…}`.
			if name != "" && !strings.Contains(doc, "`"+name+"`") && !strings.Contains(doc, "`"+name+"{") &&
				!strings.Contains(doc, "`GET "+name+"`") {
				t.Errorf("docs/engines.md does not name %s's %q", k, name)
			}
		}
	}
	if !strings.Contains(doc, "default 30 s") || DefaultStopGrace.String() != "30s" {
		t.Errorf("docs/engines.md's stop grace (default 30 s) is not DefaultStopGrace %s", DefaultStopGrace)
	}
}
