package main

import (
	"fmt"
	"os"
	"strings"
)

// notesMarker starts the hand-written part of BENCHMARKS.md, which a new run
// keeps as it is.
const notesMarker = "<!-- hand-written below: kept when go run ./bench rewrites this file -->"

// target is one goal from the issues, judged on this run.
type target struct {
	Name, Goal, Got string
	Met             bool
}

func targets(res *results) []target {
	var ts []target
	for _, r := range res.Ingest {
		k := r.Workers / 1000
		ts = append(ts,
			target{fmt.Sprintf("ingest, %dk workers", k), "≥ 100k beats/s", kps(r.Queen.Median), r.Queen.Median >= 1e5},
			target{fmt.Sprintf("ingest / store limit (Nats-TTL), %dk", k), "≥ 0.80", fmt.Sprintf("%.2f", r.RatioStore), r.RatioStore >= 0.8},
			target{fmt.Sprintf("ingest / HTTP-JSON, %dk", k), "≥ 10×", fmt.Sprintf("%.1f×", r.RatioHTTP), r.RatioHTTP >= 10})
		if r.StoreAsync.Median > 0 {
			ts = append(ts, target{fmt.Sprintf("ingest / store limit of the queen's own bucket (async persist), %dk", k), "≥ 0.80",
				fmt.Sprintf("%.2f", r.RatioAsync), r.RatioAsync >= 0.8})
		}
	}
	if l := res.Liveness; l != nil {
		got := func(v percentile, n int) string {
			return fmt.Sprintf("p99 %.0f ms, max %.0f ms (n %d of %d)", v.P99ms, v.MaxMs, v.N, n)
		}
		ts = append(ts,
			target{"crash → disconnected", "p99 ≤ 1 s", got(l.Disconnected, l.Crashed), l.Disconnected.N == l.Crashed && l.Disconnected.P99ms <= 1000},
			target{"crash → expired, beyond the worker's own TTL", "never early, max ≤ 1.5 s", got(l.Expired, l.Crashed),
				l.Expired.N == l.Crashed && l.Expired.MinMs >= 0 && l.Expired.MaxMs <= 1500},
			target{"goodbye → left", "p99 ≤ 50 ms", got(l.Goodbye, l.Left), l.Goodbye.N == l.Left && l.Goodbye.P99ms <= 50},
			target{"wrong events", "none", fmt.Sprint(l.Wrong), l.Wrong == 0})
	}
	if res.Scale != nil {
		ts = append(ts, scaleTargets(res.Scale)...)
	}
	return ts
}

func kps(v float64) string { return fmt.Sprintf("%.1f k/s", v/1000) }

func mark(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// keptNotes returns the hand-written part of an existing report, if any.
func keptNotes(path string) string {
	b, err := os.ReadFile(path)
	if i := strings.Index(string(b), notesMarker); err == nil && i >= 0 {
		return string(b[i:])
	}
	return notesMarker + "\n"
}

func markdown(res *results, notes, plot string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Benchmarks\n\nWritten by `go run ./bench` down to the hand-written notes, which a new run keeps. The ingest and\n")
	p("liveness phases run in one process over loopback: an embedded nats-server with JetStream and a temporary store\n")
	p("(as `rbee queen` runs it), the queen, a load generator and, for comparison, an HTTP server. The scale phase (§3)\n")
	p("runs each part in its own process and is run apart (`-only scale`), with its own date and flags; the table\n")
	p("below is the ingest and liveness run's.\n\n| | |\n|---|---|\n")
	p("| machine | %s |\n| flags | `%s` |\n| date | %s |\n| wall time | %s |\n", res.Machine, res.Command, res.Date, res.WallTime)
	p("| load average (1, 5, 15 min) | %s at the start, %s at the end |\n\n", res.LoadStart, res.LoadEnd)
	p("## Targets\n\n| target | goal | measured | |\n|---|---|---|---|\n")
	for _, t := range targets(res) {
		p("| %s | %s | %s | %s |\n", t.Name, t.Goal, t.Got, mark(t.Met))
	}
	p("\n")
	if len(res.Ingest) > 0 {
		ingestSection(p, res)
	}
	if l := res.Liveness; l != nil {
		livenessSection(p, l)
	}
	if s := res.Scale; s != nil {
		scaleSection(p, s, plot)
	}
	p("## Reproduce\n\n```\n")
	p("go run ./bench -cpuprofile bench/cpu.prof   # both phases; rewrites BENCHMARKS.md and bench/results.json\n")
	p("go run ./bench -only scale   # §3: 10k to 1M workers at 30 s; keeps §1 and §2 as they are\n")
	p("go run ./bench -only scale -scale-sizes '' -scale-cluster 100000   # §3's cluster run alone\n")
	p("go run ./bench -only scale -scale-sizes 10000 -scale-interval 5s -md '' -json '' -scale-plot ''   # a quick look\n")
	p("go run ./bench -only ingest -sizes 10000 -trials 1 -md '' -json ''   # a quick look\n")
	p("go test -run '^$' -bench . -benchmem ./bench/ ./wire/   # payload sizes, encode/decode\n")
	p("go tool pprof -top bench/cpu.prof\n```\n\n")
	p("%s", notes)
	return b.String()
}

func ingestSection(p func(string, ...any), res *results) {
	r0 := res.Ingest[0]
	p("## 1. Ingest\n\n")
	p("Beats per second: median of %v timed trials (min–max), each of %d beats, after one warm-up beat per worker.\n", res.Settings["trials"], r0.Beats)
	p("Every system gets the same pre-encoded worker beats (`wire.Marshal`, %.0f B; seq, sent_at_ms and slots_busy\n", r0.PayloadBytes)
	p("patched in place each round, so every beat is fresh and changes what a reader sees, and a lone queen, which\n")
	p("writes unchanged beats only as a refresh before the entry is due, writes every one; at a 30 s interval: TTL\n")
	p("90 s) from one generator goroutine on its own\n")
	p("connection, never more than %v beats ahead of what the system has handled. Each system runs on a fresh broker.\n\n", res.Settings["generator_window"])
	rows := []struct {
		name string
		get  func(ingestResult) summary
	}{
		{"**queen**: decode, validate, per-entry TTL, coalesced KV write acknowledged", func(r ingestResult) summary { return r.Queen }},
		{"(a) bus limit: core NATS publish → subscriber", func(r ingestResult) summary { return r.Core }},
		{"(b) store limit: `PublishMsgAsync` into `$KV.rbee_workers.<key>` with `Nats-TTL: 90s`", func(r ingestResult) summary { return r.Store }},
		{"(b') the same without `Nats-TTL`", func(r ingestResult) summary { return r.StoreNoTTL }},
		{"(b'') (b) watched: the same, with a watch of the bucket on its own connection (as the queen's registry mirror)", func(r ingestResult) summary { return r.StoreWatch }},
		{"(b‴) (b) into the bucket as the queen makes it: async persist mode (`queen.CreateBucket`)", func(r ingestResult) summary { return r.StoreAsync }},
		{"(c) seed design: HTTP POST of JSON → map", func(r ingestResult) summary { return r.HTTP }},
	}
	row := func(name string, cell func(ingestResult) string) {
		p("| %s |", name)
		for _, r := range res.Ingest {
			p(" %s |", cell(r))
		}
		p("\n")
	}
	header := func(first, second string) {
		p("| %s |", first)
		for _, r := range res.Ingest {
			p(" %dk workers | %s |", r.Workers/1000, second)
		}
		p("\n|---|%s\n", strings.Repeat("---|---|", len(res.Ingest)))
	}
	header("system", "CPU s / 100k")
	for _, rw := range rows {
		row(rw.name, func(r ingestResult) string {
			s := rw.get(r)
			return fmt.Sprintf("%s (%.0f–%.0f k) | %.2f", kps(s.Median), s.Min/1000, s.Max/1000, s.CPUPer100k)
		})
	}
	row("**queen / (b)**", func(r ingestResult) string { return fmt.Sprintf("**%.2f** |", r.RatioStore) })
	row("(b) / (b'): what `Nats-TTL` costs the store", func(r ingestResult) string { return fmt.Sprintf("%.2f |", r.Store.Median/r.StoreNoTTL.Median) })
	row("(b'') / (b): what a watch of the bucket leaves of the store limit", func(r ingestResult) string {
		return fmt.Sprintf("%.2f |", r.StoreWatch.Median/r.Store.Median)
	})
	row("queen / (b'')", func(r ingestResult) string { return fmt.Sprintf("%.2f |", r.Queen.Median/r.StoreWatch.Median) })
	row("(b‴) / (b): what async persist gives the store", func(r ingestResult) string {
		return fmt.Sprintf("%.2f |", r.StoreAsync.Median/r.Store.Median)
	})
	row("queen / (b‴)", func(r ingestResult) string { return fmt.Sprintf("%.2f |", r.RatioAsync) })
	row("**queen / (c)**", func(r ingestResult) string { return fmt.Sprintf("**%.1f×** |", r.RatioHTTP) })
	row("queen / (a)", func(r ingestResult) string { return fmt.Sprintf("%.2f |", r.RatioCore) })
	p("\nCPU is the whole process's (system, broker, generator; `getrusage`). (c) uses %v keep-alive senders posting the\n", res.Settings["http_senders"])
	p("same beats as JSON (%.0f B); the server decodes with `encoding/json`, runs the same `Validate` and keeps the beat in a\n", r0.JSONBytes)
	p("map; its trials are %v beats. 1-minute load average at the start of each trial (the machine is shared):\n\n", res.Settings["http_beats_per_trial"])
	header("system", "")
	for _, rw := range rows {
		row(strings.SplitN(rw.name, ":", 2)[0], func(r ingestResult) string {
			var ls []string
			for _, t := range rw.get(r).Trials {
				ls = append(ls, fmt.Sprintf("%.1f", t.Load1))
			}
			return strings.Join(ls, ", ") + " |"
		})
	}
	p("\nNothing lost — checked after the queen's trials:\n\n")
	header("check", "")
	row("beats sent / accepted / rejected", func(r ingestResult) string {
		return fmt.Sprintf("%d / %d / %d |", r.Verify.Sent, r.Verify.Accepted, r.Verify.Rejected)
	})
	row("beats coalesced (replaced before written) / writes lost / beats dropped", func(r ingestResult) string {
		return fmt.Sprintf("%d / %d / %d |", r.Verify.Coalesced, r.Verify.Lost, r.Verify.Dropped)
	})
	row("KV values; mirror entries at the last seq", func(r ingestResult) string {
		return fmt.Sprintf("%d; %d |", r.Verify.KVValues, r.Verify.MirrorAtLastSeq)
	})
	row("verified", func(r ingestResult) string {
		if r.Verify.OK {
			return "yes |"
		}
		return "**no**: " + strings.Join(r.Verify.Problems, "; ") + " |"
	})
	p("\n")
	for _, r := range res.Ingest {
		if pr := r.Profile; pr != nil {
			p("### CPU profile of one more queen trial, %dk workers\n\n", r.Workers/1000)
			p("%d beats at %.1f k/s; `%s`, read with `github.com/google/pprof/profile`. The broker runs in the same process.\n", pr.Beats, pr.Rate/1000, pr.Path)
			p("A sample counts for the first activity with a frame on its stack.\n\n| activity | CPU |\n|---|---|\n")
			for _, s := range pr.Split {
				p("| %s | %.1f %% |\n", s.Name, s.Percent)
			}
			p("\n")
		}
	}
}

func livenessSection(p func(string, ...any), l *livenessResult) {
	p("## 2. Liveness\n\n")
	p("%d workers, each on its own NATS connection, half beating every 1 s and half every 2 s (TTL %d × interval: 3 s\n", l.Workers, l.Missed)
	p("and 6 s), into a queen with `Advisories` on. Once all have joined, %d crash at one instant (their connection\n", l.Crashed)
	p("closed with `nc.Close()`, no goodbye) and %d leave, one goodbye every 2 ms, each closing its connection after it.\n", l.Left)
	p("Times are taken from the queen's `OnEvent` callback.\n\n| | n | min | p50 | p99 | max |\n|---|---|---|---|---|---|\n")
	row := func(name string, v percentile) {
		p("| %s | %d | %.1f ms | %.1f ms | %.1f ms | %.1f ms |\n", name, v.N, v.MinMs, v.P50ms, v.P99ms, v.MaxMs)
	}
	row("crash: connection closed → `disconnected`", l.Disconnected)
	row("crash: last beat + own TTL → `expired`", l.Expired)
	row("crash: last beat + own TTL → the purge marker's server time", l.Marker)
	row("goodbye sent → `left`", l.Goodbye)
	p("\nDISCONNECT advisories seen after the crash instant (crashed and leaving connections): %d; registry entries\n", l.Advisories)
	p("holding their worker's `conn` before it: %d of %d. Wrong events (an expiry, leave or disconnect while beating,\n", l.ConnKnown, l.Workers)
	p("a `left` for a crashed worker, a disconnect or expiry after a goodbye): %d %v; missing: %d.\n", l.Wrong, l.WrongBy, l.Missing)
	for _, pr := range l.Problems {
		p("\n**%s.**\n", pr)
	}
	p("\n")
}
