package web

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// docKeys returns the keys of the table under <!-- http:keys name --> in
// docs/http.md.
func docKeys(t *testing.T, doc, name string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, "<!-- http:keys "+name+" -->")
	if !ok {
		t.Fatalf("docs/http.md has no table of the %s message's keys", name)
	}
	var keys []string
	for i, line := range strings.Split(strings.TrimLeft(rest, "\n"), "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		if i < 2 { // header and rule
			continue
		}
		cell := strings.TrimSpace(strings.Split(line, "|")[1])
		keys = append(keys, strings.Trim(cell, "`"))
	}
	return keys
}

// jsonKeys returns the JSON names of v's fields.
func jsonKeys(v any) []string {
	var keys []string
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		keys = append(keys, name)
	}
	return keys
}

// TestStreamMessagesDocumented: docs/http.md lists exactly the keys of the
// stream's snapshot and update messages, so the documentation cannot drift
// from what the stream sends.
func TestStreamMessagesDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/http.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for name, v := range map[string]any{"snapshot": snapshot{}, "update": update{}} {
		got, want := docKeys(t, doc, name), jsonKeys(v)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("docs/http.md lists the %s message's keys %q; the stream sends %q", name, got, want)
		}
	}
	for _, name := range []string{"snapshot", "update", "event"} {
		if !strings.Contains(doc, "event: "+name) {
			t.Errorf("docs/http.md shows no %q message", name)
		}
	}
}
