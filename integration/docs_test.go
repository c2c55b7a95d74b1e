package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// slug is GitHub's anchor for a heading: lower case, punctuation dropped,
// spaces as hyphens.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127 && r != '…' && r != '—' && r != '–' && r != '×':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors returns the anchors of a Markdown file's headings.
func anchors(text string) map[string]bool {
	a := map[string]bool{}
	inCode := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if !inCode && strings.HasPrefix(line, "#") {
			a[slug(strings.TrimLeft(line, "#"))] = true
		}
	}
	return a
}

// TestDocsLinks: every relative link in README.md and docs/ names a file
// that exists and, with a #fragment into a Markdown file, a heading it has;
// every folder docs/layout.md lists exists.
func TestDocsLinks(t *testing.T) {
	pages, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "../README.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, frag, _ := strings.Cut(target, "#")
			path := page
			if file != "" {
				path = filepath.Join(filepath.Dir(page), file)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s links %s: %v", page, target, err)
				continue
			}
			if frag != "" && strings.HasSuffix(path, ".md") {
				tb, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !anchors(string(tb))[frag] {
					t.Errorf("%s links %s: %s has no heading #%s", page, target, path, frag)
				}
			}
		}
	}
	b, err := os.ReadFile("../docs/layout.md")
	if err != nil {
		t.Fatal(err)
	}
	folders := regexp.MustCompile("(?m)^\\| `([a-z/]+)/`(?:, `([a-z/]+)/`)? \\|").FindAllStringSubmatch(string(b), -1)
	if len(folders) < 10 {
		t.Fatalf("docs/layout.md lists %d folders", len(folders))
	}
	for _, m := range folders {
		for _, f := range m[1:] {
			if f == "" {
				continue
			}
			if st, err := os.Stat(filepath.Join("..", f)); err != nil || !st.IsDir() {
				t.Errorf("docs/layout.md lists %s/, which is not a folder: %v", f, err)
			}
		}
	}
}
