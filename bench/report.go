package main

import (
	"fmt"
	"os"
	"strings"
)

// notesMarker starts the hand-written part of BENCHMARKS.md, which a new run
// keeps as it is.
const notesMarker = "<!-- hand-written below: kept when go run ./bench rewrites this file -->"

func kps(v float64) string { return fmt.Sprintf("%.1f k/s", v/1000) }

func spread(s summary) string {
	if len(s.Trials) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%s (%.0f–%.0f k)", kps(s.Median), s.Min/1000, s.Max/1000)
}

func mark(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// target is one goal from the benchmark issue, judged on this run.
type target struct {
	Name, Goal, Got string
	Met             bool
}

func targets(res *results) []target {
	var ts []target
	for _, r := range res.Ingest {
		ts = append(ts,
			target{fmt.Sprintf("ingest, %dk workers", r.Workers/1000), "≥ 100k beats/s", kps(r.Queen.Median), r.Queen.Median >= 100000},
			target{fmt.Sprintf("ingest / store limit, %dk", r.Workers/1000), "≥ 0.70", fmt.Sprintf("%.2f", r.RatioStore), r.RatioStore >= 0.7},
			target{fmt.Sprintf("ingest / HTTP-JSON, %dk", r.Workers/1000), "≥ 10×", fmt.Sprintf("%.1f×", r.RatioHTTP), r.RatioHTTP >= 10},
		)
	}
	if l := res.Latency; l != nil {
		ts = append(ts,
			target{"crash → expired, lateness beyond TTL", "p99 ≤ 1 s", fmt.Sprintf("p99 %.0f ms", l.Lateness.P99ms), l.Lateness.N > 0 && l.Lateness.P99ms <= 1000 && l.Missing == 0},
			target{"goodbye → left", "p99 ≤ 50 ms", fmt.Sprintf("p99 %.1f ms", l.Goodbye.P99ms), l.Goodbye.N > 0 && l.Goodbye.P99ms <= 50 && l.Missing == 0},
		)
	}
	if s := res.Sizes; s != nil {
		ts = append(ts,
			target{"worker payload msgpack / JSON", "≤ 70 %", fmt.Sprintf("%.0f %%", 100*s.WorkerRatio), s.WorkerRatio <= 0.7},
			target{"hive payload msgpack / JSON", "≤ 70 %", fmt.Sprintf("%.0f %%", 100*s.HiveRatio), s.HiveRatio <= 0.7},
		)
	}
	if m := res.Memory; m != nil {
		ts = append(ts, target{"queen memory per registered worker", "≤ 1 KiB", fmt.Sprintf("%.0f B", m.HeapPerWorker), m.HeapPerWorker <= 1024})
	}
	return ts
}

// table is the short text summary printed at the end of a run.
func table(res *results) string {
	var b strings.Builder
	for _, r := range res.Ingest {
		fmt.Fprintf(&b, "%6d workers: queen %s  store %s  relay %s  core %s  http %s  queen/store %.2f queen/http %.1fx queen/core %.2f  verified %v\n",
			r.Workers, kps(r.Queen.Median), kps(r.Store.Median), kps(r.Relay.Median), kps(r.Core.Median), kps(r.HTTP.Median),
			r.RatioStore, r.RatioHTTP, r.RatioCore, r.Verify.OK)
	}
	if l := res.Latency; l != nil {
		fmt.Fprintf(&b, "expired lateness p50/p99/max %.0f/%.0f/%.0f ms; goodbye→left %.1f/%.1f/%.1f ms\n",
			l.Lateness.P50ms, l.Lateness.P99ms, l.Lateness.MaxMs, l.Goodbye.P50ms, l.Goodbye.P99ms, l.Goodbye.MaxMs)
	}
	if s := res.Sizes; s != nil {
		fmt.Fprintf(&b, "worker %d B msgpack / %d B JSON (%.0f%%); hive %d / %d (%.0f%%)\n",
			s.WorkerMsgpack, s.WorkerJSON, 100*s.WorkerRatio, s.HiveMsgpack, s.HiveJSON, 100*s.HiveRatio)
	}
	if m := res.Memory; m != nil {
		fmt.Fprintf(&b, "queen heap %.0f B/worker, RSS %.0f B/worker; CPU per 100k beats: queen %.2fs generator %.2fs broker %.2fs (%.1f k/s)\n",
			m.HeapPerWorker, m.RSSPerWorker, m.QueenCPUPer100k, m.GenCPUPer100k, m.BrokerCPUPer100k, m.Rate/1000)
	}
	for _, w := range res.Wire {
		fmt.Fprintf(&b, "%-22s %8.0f ns/op %6d B/op %4d allocs/op\n", w.Name, w.NsPerOp, w.BytesPerOp, w.AllocsPerOp)
	}
	for _, t := range targets(res) {
		fmt.Fprintf(&b, "target %-40s %-14s %-14s %s\n", t.Name, t.Goal, t.Got, mark(t.Met))
	}
	return b.String()
}

// keptNotes returns the hand-written part of an existing report, if any.
func keptNotes(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if i := strings.Index(string(b), notesMarker); i >= 0 {
		return string(b[i:])
	}
	return ""
}

func markdown(res *results, notes string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := res.Machine
	p("# Benchmarks\n\n")
	p("Everything below the hand-written notes' marker is written by `go run ./bench`; the notes at the end are kept\n")
	p("when it rewrites this file. Every number comes from one run of the command below on this machine, over\n")
	p("loopback: an embedded nats-server with JetStream and a temporary store, the queen, a load generator, and for\n")
	p("comparison an HTTP server, all started by the program.\n\n")
	p("| | |\n|---|---|\n")
	p("| machine | %d CPUs (`nproc`), %s, %s RAM, Linux %s |\n", m.NProc, m.CPUModel, m.RAM, m.Kernel)
	p("| Go | %s %s |\n", m.GoVersion, m.OSArch)
	p("| command | `%s` |\n", res.Command)
	p("| date | %s |\n", res.Date)
	p("| wall time | %s |\n\n", res.WallTime)

	if ts := targets(res); len(ts) > 0 {
		p("## Targets\n\n| target | goal | measured | |\n|---|---|---|---|\n")
		for _, t := range ts {
			p("| %s | %s | %s | %s |\n", t.Name, t.Goal, t.Got, mark(t.Met))
		}
		p("\nWhat blocks the targets not met is in the notes at the end.\n\n")
	}
	if len(res.Ingest) > 0 {
		ingestSection(p, res)
	}
	if l := res.Latency; l != nil {
		p("## 2. Detection latency\n\n")
		p("%d workers beat every %s (staggered over the interval, encoded with wire.Marshal) into a queen whose worker\n", l.Workers, l.Interval)
		p("bucket has a %s TTL. Once all have joined, half crash at the same instant (no goodbye) and the other half stop\n", l.TTL)
		p("gracefully, one goodbye every 2 ms. Times are taken from the queen's `OnEvent` callback.\n\n")
		p("| | n | p50 | p99 | max |\n|---|---|---|---|---|\n")
		row := func(name string, v percentile) {
			p("| %s | %d | %.1f ms | %.1f ms | %.1f ms |\n", name, v.N, v.P50ms, v.P99ms, v.MaxMs)
		}
		row("crash: last beat → `expired` event, beyond the TTL", l.Lateness)
		row("crash: last beat → purge marker's server timestamp, beyond the TTL", l.MarkerLateness)
		row("graceful: goodbye sent → `left` event", l.Goodbye)
		p("\nWrong events (an expiry or leave while beating, a `left` for a crashed worker): %d; missing events: %d.\n\n", l.Wrong, l.Missing)
	}
	if s := res.Sizes; s != nil {
		p("## 3. Payload size\n\n")
		p("The same Go value encoded with `wire.Marshal` (msgpack, the wire format) and with `encoding/json`.\n\n")
		p("| payload | msgpack | JSON | msgpack / JSON |\n|---|---|---|---|\n")
		p("| worker heartbeat | %d B | %d B | %.0f %% |\n", s.WorkerMsgpack, s.WorkerJSON, 100*s.WorkerRatio)
		p("| worker registry entry (beat + queen's keys) | %d B | %d B | %.0f %% |\n", s.EntryMsgpack, s.EntryJSON, 100*float64(s.EntryMsgpack)/float64(s.EntryJSON))
		p("| hive heartbeat (%d GPUs, %d workers) | %d B | %d B | %.0f %% |\n", s.HiveGPUs, s.HiveWorkers, s.HiveMsgpack, s.HiveJSON, 100*s.HiveRatio)
		p("\nKey names alone are %d of the worker's %d msgpack bytes (%.0f %%) and %d of the hive's %d (%.0f %%).\n\n",
			s.WorkerKeyBytes, s.WorkerMsgpack, 100*float64(s.WorkerKeyBytes)/float64(s.WorkerMsgpack),
			s.HiveKeyBytes, s.HiveMsgpack, 100*float64(s.HiveKeyBytes)/float64(s.HiveMsgpack))
	}
	if mem := res.Memory; mem != nil {
		memorySection(p, mem)
	}
	if len(res.Wire) > 0 {
		p("## 5. Encode and decode\n\n")
		p("`wire/bench_test.go`'s benchmarks on the same payloads, run in-process with `testing.Benchmark`\n")
		p("(`go test -run '^$' -bench . -benchmem ./wire` gives the same figures).\n\n")
		p("| benchmark | payload | ns/op | B/op | allocs/op |\n|---|---|---|---|---|\n")
		for _, w := range res.Wire {
			p("| %s | %d B | %.0f | %d | %d |\n", w.Name, w.Size, w.NsPerOp, w.BytesPerOp, w.AllocsPerOp)
		}
		p("\n")
	}
	if pr := res.Profile; pr != nil {
		p("## 6. CPU profile of the queen under load\n\n")
		p("%d worker beats from %dk registered workers at %.1f k/s, broker in a child process, so the profile holds the\n", pr.Beats, res.Memory.Workers/1000, pr.Rate/1000)
		p("queen, its NATS client and the load generator (`main.(*gen).run`, `main.(*coreSink).send`).\n\n")
		if len(pr.Split) > 0 {
			p("Samples by activity (a sample counts for the first activity whose functions are all on its stack):\n\n")
			p("| activity | share of CPU samples |\n|---|---|\n")
			for _, sh := range pr.Split {
				p("| %s | %.1f %% |\n", sh.Activity, sh.Percent)
			}
			p("\n")
		}
		p("`go tool pprof -top -nodecount=30 %s`:\n\n```\n%s\n```\n\n", pr.Path, pr.Top)
	}
	p("## Reproduce\n\n")
	p("```\ngo run ./bench -cpuprofile bench/cpu.prof     # everything, ~%s; rewrites BENCHMARKS.md and bench/results.json\n", res.WallTime)
	p("go run ./bench -only ingest -sizes 10000 -trials 1   # one phase: wire, size, ingest, latency, memory\n")
	p("go test -run '^$' -bench . -benchmem ./wire        # encode/decode only\n")
	p("go tool pprof -top bench/cpu.prof                   # the profile's top\n```\n\n")
	p("`go run ./bench -h` lists the knobs (fleet sizes, trials, beats per trial, generator window, HTTP senders,\n")
	p("`-child-broker` to run the ingest phase's broker in its own process). Nothing leaves loopback; every loop is\n")
	p("bounded by a count and a deadline.\n\n")
	if notes != "" {
		p("%s", notes)
	} else {
		p("%s\n", notesMarker)
	}
	return b.String()
}

func ingestSection(p func(string, ...any), res *results) {
	p("## 1. Ingest throughput\n\n")
	r0 := res.Ingest[0]
	p("Beats per second: median of the timed trials (min–max in brackets), each of %d beats, after one warm-up beat per\n", r0.BeatsPerRun)
	p("worker. Every system is fed the same pre-encoded worker payloads (`wire.Marshal`, %.0f B; seq and sent_at_ms\n", r0.PayloadBytes)
	p("patched in place per round so that every beat is fresh) by the same generator: one goroutine publishing on its own\n")
	p("connection, never more than %d beats ahead of what the system has handled, which keeps every subscriber clear of\n", res.Settings.Window)
	if res.Settings.ChildBroker {
		p("slow-consumer drops. The broker runs in a child process (`-child-broker`).\n\n")
	} else {
		p("slow-consumer drops. The broker runs in this process, as `rbee queen` runs it.\n\n")
	}
	row := func(name string, get func(ingestResult) string) {
		p("| %s |", name)
		for _, r := range res.Ingest {
			p(" %s |", get(r))
		}
		p("\n")
	}
	header := func(first string) {
		p("| %s |", first)
		for _, r := range res.Ingest {
			p(" %dk workers |", r.Workers/1000)
		}
		p("\n|---|")
		for range res.Ingest {
			p("---|")
		}
		p("\n")
	}
	header("system")
	row("**queen**: decode, validate, replay check, KV put acknowledged", func(r ingestResult) string { return "**" + spread(r.Queen) + "**" })
	row("(a) core NATS publish → subscriber (bus limit)", func(r ingestResult) string { return spread(r.Core) })
	row("(b) KV puts straight into `$KV.rbee_workers.<key>`, lean acks (store limit)", func(r ingestResult) string { return spread(r.Store) })
	row("(b) same with nats.go `PublishMsgAsync`", func(r ingestResult) string { return spread(r.StoreStd) })
	row("relay: core subscriber → KV put, nothing decoded", func(r ingestResult) string { return spread(r.Relay) })
	row("(c) HTTP POST of JSON → map (seed design)", func(r ingestResult) string { return spread(r.HTTP) })
	row("**queen / (b)**", func(r ingestResult) string { return fmt.Sprintf("**%.2f**", r.RatioStore) })
	row("**queen / (c)**", func(r ingestResult) string { return fmt.Sprintf("**%.1f×**", r.RatioHTTP) })
	row("**queen / (a)**", func(r ingestResult) string { return fmt.Sprintf("**%.2f**", r.RatioCore) })
	p("\n(b) is the faster of its two rows. (c) uses %d keep-alive senders posting the same beats as JSON (%.0f B); the server\n", res.Settings.HTTPSenders, r0.JSONBytes)
	p("decodes with `encoding/json`, runs the same `Validate` and stores the beat in a map; its trials are %d beats.\n\n", res.Settings.HTTPBeats)
	p("CPU seconds per 100k beats of the whole process (system under test, broker, generator; `getrusage`):\n\n")
	header("system")
	cpu := func(s summary) string { return fmt.Sprintf("%.2f", s.ProcCPUPer100k) }
	row("queen", func(r ingestResult) string { return cpu(r.Queen) })
	row("(a) core NATS", func(r ingestResult) string { return cpu(r.Core) })
	row("(b) KV puts, lean", func(r ingestResult) string { return cpu(r.Store) })
	row("(b) KV puts, `PublishMsgAsync`", func(r ingestResult) string { return cpu(r.StoreStd) })
	row("relay", func(r ingestResult) string { return cpu(r.Relay) })
	row("(c) HTTP/JSON", func(r ingestResult) string { return cpu(r.HTTP) })
	p("\nNothing lost — checked after the queen's trials:\n\n")
	header("check")
	row("beats sent / accepted / rejected", func(r ingestResult) string {
		return fmt.Sprintf("%d / %d / %d", r.Verify.Sent, r.Verify.Accepted, r.Verify.Rejected)
	})
	row("writes in flight after / lost / errors / retries", func(r ingestResult) string {
		return fmt.Sprintf("%d / %d / %d / %d", r.Verify.InFlight, r.Verify.WritesLost, r.Verify.WriteErrors, r.Verify.WriteRetries)
	})
	row("KV values / distinct keys (want)", func(r ingestResult) string {
		return fmt.Sprintf("%d / %d (%d)", r.Verify.KVValues, r.Verify.KVKeys, r.Verify.WantKeys)
	})
	row("mirror entries at the last seq; sampled `kv.Get`s at it", func(r ingestResult) string {
		return fmt.Sprintf("%d; %d of %d", r.Verify.MirrorAtLastSeq, r.Verify.SampledGetsOK, r.Verify.SampledGets)
	})
	row("slow-consumer or other async errors", func(r ingestResult) string {
		if r.Verify.AsyncErrors == "" {
			return "none"
		}
		return r.Verify.AsyncErrors
	})
	row("verified", func(r ingestResult) string {
		if r.Verify.OK {
			return "yes"
		}
		return "**no**: " + strings.Join(r.Verify.Problems, "; ")
	})
	row("process RSS after (queen + broker + fixtures)", func(r ingestResult) string { return mib(r.RSS) })
	p("\n")
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func memorySection(p func(string, ...any), m *memoryResult) {
	p("## 4. Memory and CPU\n\n")
	p("The broker runs in a child process here (the same program, `-broker-child`), so this process holds only the\n")
	p("queen, its NATS connection and the load generator, whose fixtures are allocated before the first reading.\n")
	p("Heap is `runtime.MemStats.HeapAlloc` and RSS is `VmRSS`, both read after `debug.FreeOSMemory()` (a full GC that\n")
	p("also returns free pages). The first reading already holds the fixtures (%s of payloads and subjects).\n\n", mib(int64(m.FixtureHeap)))
	p("| | |\n|---|---|\n")
	p("| live heap, queen started on empty buckets | %s |\n", mib(int64(m.HeapStarted)))
	p("| live heap, %dk workers registered (KV entry, tracker entry, watcher mirror entry each) | %s |\n", m.Workers/1000, mib(int64(m.HeapRegistered)))
	p("| **queen heap per registered worker** | **%.0f B** |\n", m.HeapPerWorker)
	p("| queen RSS per registered worker | %.0f B |\n", m.RSSPerWorker)
	p("| queen process RSS, registered (includes the generator's fixtures) | %s |\n", mib(m.RSSRegistered))
	p("| broker process RSS | %s |\n", mib(m.BrokerRSS))
	p("| throughput while measuring CPU (%d beats) | %.1f k/s |\n", m.Beats, m.Rate/1000)
	p("| queen process CPU per 100k beats (queen and generator) | %.2f s |\n", m.ProcCPUPer100k)
	p("| **queen CPU per 100k beats** (the process minus the generator) | **%.2f s** |\n", m.QueenCPUPer100k)
	p("| load generator CPU per 100k beats (the same messages published where nobody listens) | %.2f s |\n", m.GenCPUPer100k)
	p("| broker CPU per 100k beats (child process) | %.2f s |\n", m.BrokerCPUPer100k)
	p("| verified (as in section 1) | %v |\n\n", yesNo(m.Verify.OK))
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}
