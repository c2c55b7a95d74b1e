package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// result is what one case measured and how it compares with its target.
type result struct {
	name, title, target string
	anchor              string // the report's link target: the case's name, and its round when repeated
	round               string // "2 of 3" when repeated, else empty
	command             string
	offered             []string
	figures             [][2]string
	checks              []check
	notes               []string
	skipped             string // why the case could not run here
	err                 error
	took                time.Duration
	loadBefore          string
	loadAfter           string
}

// check is one target compared with a measurement.
type check struct {
	what string
	ok   bool
	got  string
}

func (r *result) offer(format string, args ...any) {
	r.offered = append(r.offered, fmt.Sprintf(format, args...))
}
func (r *result) fig(name string, format string, args ...any) {
	r.figures = append(r.figures, [2]string{name, fmt.Sprintf(format, args...)})
}
func (r *result) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}
func (r *result) expect(what string, ok bool, format string, args ...any) {
	r.checks = append(r.checks, check{what: what, ok: ok, got: fmt.Sprintf(format, args...)})
}

// failed reports whether a check so far failed.
func (r *result) failed() bool {
	for _, c := range r.checks {
		if !c.ok {
			return true
		}
	}
	return false
}

func (r *result) verdict() string {
	switch {
	case r.skipped != "":
		return "not run"
	case r.err != nil:
		return "error"
	case len(r.checks) == 0:
		return "measured"
	}
	for _, c := range r.checks {
		if !c.ok {
			return "FAIL"
		}
	}
	return "pass"
}

type report struct {
	opt     options
	results []*result
	missed  bool
	took    time.Duration
	started time.Time
}

func (p report) markdown() string {
	var b strings.Builder
	b.WriteString("# Reliability\n\n")
	if p.opt.note != "" {
		b.WriteString("> " + p.opt.note + "\n\n")
	}
	mode := "full"
	if p.opt.quick {
		mode = "quick (-quick)"
	}
	fmt.Fprintf(&b, "Written by `go run ./chaos` (%s mode) on %s UTC in %s. Every case runs real processes: the `rbee` binary built "+
		"from this tree (`rbee queen` with its embedded broker, `rbee worker --simulate N`), a load generator in a process of "+
		"its own, and the chaos program itself as the observer. It judges only through NATS, KV (a watch on `rbee_workers`: "+
		"purge marker = expired, delete marker = left), HTTP (`/healthz`) and `/metrics`. Loopback only.\n\n",
		mode, p.started.UTC().Format("2006-01-02 15:04"), p.took.Round(time.Second))
	ttlFlags := "`--worker-ttl 3s --hive-ttl 3s` (bucket TTL)"
	if p.missed {
		ttlFlags = "`--missed 3` (per-entry TTL)"
	}
	fmt.Fprintf(&b, "Every worker beats every %s; the queen runs with %s, so the TTL is 3 beats = %s. "+
		"A *false expiry* is a purge marker for a worker whose process was beating (and, for the load generator's workers, "+
		"seen before the generator stopped). Healthy workers whose false expiries are counted run in their own, lightly "+
		"loaded `rbee worker` process; load comes from another.\n\n", interval, ttlFlags, ttl)
	b.WriteString("## Machine\n\n")
	for _, l := range machine() {
		b.WriteString("- " + l + "\n")
	}
	b.WriteString("- load average (1, 5, 15 min) is noted per case; the machine is shared, so figures vary between runs\n\n")

	b.WriteString("## Summary\n\n| case | target | result |\n|---|---|---|\n")
	for _, r := range p.results {
		title := r.title
		if r.round != "" {
			title += " (" + r.round + ")"
		}
		fmt.Fprintf(&b, "| [%s](#%s) | %s | %s |\n", title, r.anchor, r.target, r.summary())
	}
	b.WriteString("\n")
	if p.opt.baseline != "" {
		b.WriteString(baseline(p.opt.baseline))
	}
	for _, r := range p.results {
		fmt.Fprintf(&b, "<a id=\"%s\"></a>\n## %s: %s\n\n", r.anchor, r.name, r.title)
		fmt.Fprintf(&b, "Target: %s. Result: **%s**. Reproduce: `%s`. Took %s; load average %s before, %s after.\n\n",
			r.target, r.verdict(), r.command, r.took.Round(time.Second), r.loadBefore, r.loadAfter)
		if r.skipped != "" {
			fmt.Fprintf(&b, "Not run here: %s\n\n", r.skipped)
		}
		if r.err != nil {
			fmt.Fprintf(&b, "Error: %s\n\n", oneLine(r.err.Error()))
		}
		if len(r.offered) > 0 {
			b.WriteString("Offered:\n")
			for _, l := range r.offered {
				b.WriteString("- " + l + "\n")
			}
			b.WriteString("\n")
		}
		if len(r.figures) > 0 {
			b.WriteString("| figure | value |\n|---|---|\n")
			for _, f := range r.figures {
				fmt.Fprintf(&b, "| %s | %s |\n", f[0], cell(f[1]))
			}
			b.WriteString("\n")
		}
		if len(r.checks) > 0 {
			b.WriteString("| must hold | measured | |\n|---|---|---|\n")
			for _, c := range r.checks {
				v := "pass"
				if !c.ok {
					v = "**FAIL**"
				}
				fmt.Fprintf(&b, "| %s | %s | %s |\n", c.what, cell(c.got), v)
			}
			b.WriteString("\n")
		}
		for _, n := range r.notes {
			b.WriteString("- " + n + "\n")
		}
		if len(r.notes) > 0 {
			b.WriteString("\n")
		}
	}
	return b.String()
}

func (r *result) summary() string {
	v := r.verdict()
	var bad []string
	for _, c := range r.checks {
		if !c.ok {
			bad = append(bad, c.what+": "+c.got)
		}
	}
	if len(bad) > 0 {
		return "**" + v + "**: " + cell(strings.Join(bad, "; "))
	}
	if v == "measured" && len(r.figures) > 0 {
		return r.figures[0][0] + ": " + r.figures[0][1]
	}
	if r.err != nil {
		return "error: " + cell(oneLine(r.err.Error()))
	}
	if r.skipped != "" {
		return "not run: " + r.skipped
	}
	return v
}

func cell(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ") }

// oneLine puts s on one line, keeping its start and its end when it is
// long: an exited process's last lines say why it exited.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 1200 {
		s = strings.ToValidUTF8(s[:300], "") + " … " + strings.ToValidUTF8(s[len(s)-900:], "")
	}
	return strings.ReplaceAll(s, "\n", " ⏎ ")
}

// baseline returns the summary of an earlier report, quoted under a heading
// of its own, with the note and the date it was written.
func baseline(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(baseline %s unreadable: %v)\n\n", path, err)
	}
	s := string(data)
	var b strings.Builder
	b.WriteString("## Baseline for comparison\n\n")
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "> ") || strings.HasPrefix(l, "Written by") {
			b.WriteString(strings.ReplaceAll(l, "](#", "](#base-") + "\n\n")
			if strings.HasPrefix(l, "Written by") {
				break
			}
		}
	}
	i := strings.Index(s, "## Summary\n")
	if i < 0 {
		return ""
	}
	rest := s[i+len("## Summary\n"):]
	if j := strings.Index(rest, "\n## "); j >= 0 {
		rest = rest[:j]
	}
	if j := strings.Index(rest, "\n<a id"); j >= 0 {
		rest = rest[:j]
	}
	// Its links point into the other file; keep the text only.
	for {
		a := strings.Index(rest, "](#")
		if a < 0 {
			break
		}
		e := strings.Index(rest[a:], ")")
		o := strings.LastIndex(rest[:a], "[")
		if e < 0 || o < 0 {
			break
		}
		rest = rest[:o] + rest[o+1:a] + rest[a+e+1:]
	}
	b.WriteString(strings.TrimSpace(rest) + "\n\n")
	return b.String()
}
