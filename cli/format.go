package cli

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rbee/heartbeat/fleet"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
)

// termSafe returns s with everything a terminal could act on escaped:
// control characters (C0, DEL, C1: escape sequences, carriage returns, tabs),
// invisible format characters (bidirectional overrides, zero-width), line
// and paragraph separators, and invalid UTF-8. Each is written as \xNN or
// \uNNNN, so a model name or health reason can never move the cursor, clear
// the screen or disguise other output.
func termSafe(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r < 0x100 && unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Co, unicode.Cs):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// dash returns termSafe(s), or "-" when s is empty.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return termSafe(s)
}

func age(nowMs, ms int64) string {
	if ms == 0 {
		return "-"
	}
	d := time.Duration(nowMs-ms) * time.Millisecond
	switch {
	case d < time.Minute: // "0.1s" … "59.9s"
		return fmt.Sprintf("%.1fs", d.Round(100*time.Millisecond).Seconds())
	case d < time.Hour: // "12m31s"
		return d.Round(time.Second).String()
	}
	return strings.TrimSuffix(d.Round(time.Minute).String(), "0s") // "3h12m"
}

func gib(b uint64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<30)) }

// liveness is the LIVENESS column: absent means alive.
func liveness(r wire.Received) string {
	l := string(r.Liveness)
	if l == "" {
		l = string(wire.LivenessAlive)
	}
	if r.Conflict {
		l += " (conflict)"
	}
	return termSafe(l)
}

// gpuLine is one GPU under its hive: free VRAM first, the figure a
// scheduler places by.
func gpuLine(g wire.GPU) string {
	cells := []string{fmt.Sprintf("  gpu %d", g.Index), dash(g.Name)}
	if g.VRAMUsedBytes != nil && g.VRAMTotalBytes != nil {
		free := uint64(0)
		if *g.VRAMTotalBytes > *g.VRAMUsedBytes {
			free = *g.VRAMTotalBytes - *g.VRAMUsedBytes
		}
		cells = append(cells, "free "+gib(free)+" of "+gib(*g.VRAMTotalBytes)+" GiB")
	} else {
		cells = append(cells, "free ? GiB")
	}
	opt := func(p *float64, format string) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf(format, *p)
	}
	cells = append(cells, opt(g.UtilPercent, "%.0f%%"), opt(g.TemperatureC, "%.0fC"), opt(g.PowerW, "%.0fW"))
	health := string(g.Health)
	if health == "" {
		health = string(wire.Healthy)
	}
	cells = append(cells, termSafe(health))
	var extra []string
	if g.HealthReason != "" {
		extra = append(extra, termSafe(g.HealthReason))
	}
	if g.Xid != nil {
		extra = append(extra, fmt.Sprintf("xid %d", *g.Xid))
	}
	if g.RecoveryAction != "" && g.RecoveryAction != "none" {
		extra = append(extra, "recovery "+termSafe(g.RecoveryAction))
	}
	cells = append(cells, strings.Join(extra, ", "))
	return strings.Join(cells, "\t")
}

// printQueens writes the queen registry as a table.
func printQueens(w io.Writer, queens []*wire.QueenEntry, now time.Time) {
	nowMs := now.UnixMilli()
	sort.Slice(queens, func(i, j int) bool { return queens[i].QueenID < queens[j].QueenID })
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "QUEENS (%d)\n", len(queens))
	if len(queens) == 0 {
		fmt.Fprintln(tw, "no queen is beating: schedulers should hold rescheduling")
	} else {
		fmt.Fprintln(tw, "ID\tSTATE\tAGE\tBACKLOG\tWRITE LAG\tENTRIES\tVERSION\tREASON")
	}
	for _, q := range queens {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", termSafe(q.QueenID), dash(string(q.State)), age(nowMs, q.ReceivedAtMs),
			q.Backlog, time.Duration(q.WriteLagMs)*time.Millisecond, q.Entries, dash(q.Version), dash(q.Reason))
	}
	fmt.Fprintln(tw)
	_ = tw.Flush()
}

// printStatus writes the registry as three tables: the models' summary, the
// hives and the workers, each with its problems first (not alive, unhealthy,
// degraded) and names in natural order (sim-2 before sim-10). Each GPU takes
// a line of its own under its hive, so that a hive with 8 GPUs stays readable.
func printStatus(w io.Writer, workers []*wire.WorkerEntry, hives []*wire.HiveEntry, now time.Time) {
	nowMs := now.UnixMilli()
	sortProblemsFirst(workers, hives)
	models := fleet.Summarize(workers)
	mtw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(mtw, "MODELS (%d)\n", len(models))
	fmt.Fprintln(mtw, "MODEL\tREADY\tBUSY\tPROBLEM\tOTHER")
	for _, m := range models {
		fmt.Fprintf(mtw, "%s\t%d\t%d\t%d\t%d\n", dash(m.Model), m.Ready, m.Busy, m.Problem, m.Other)
	}
	_ = mtw.Flush()
	fmt.Fprintln(w)
	var hb, gb bytes.Buffer
	htw := tabwriter.NewWriter(&hb, 2, 4, 2, ' ', 0)
	gtw := tabwriter.NewWriter(&gb, 2, 4, 2, ' ', 0)
	fmt.Fprintln(htw, "ID\tAGE\tHEALTH\tLIVENESS\tCPU%\tRAM GiB\tGPUS\tWORKERS\tREASON")
	for _, h := range hives {
		reason := h.HealthReason
		if h.StatsStale {
			reason = strings.TrimPrefix(reason+"; stats stale", "; ")
		}
		fmt.Fprintf(htw, "%s\t%s\t%s\t%s\t%.1f\t%s/%s\t%d\t%d\t%s\n", termSafe(h.HiveID), age(nowMs, h.ReceivedAtMs), dash(string(h.Health)),
			liveness(h.Received), h.CPUPercent, gib(h.RAMUsedBytes), gib(h.RAMTotalBytes), len(h.GPUs), len(h.Workers)+h.WorkersOmitted, dash(reason))
		for _, g := range h.GPUs {
			fmt.Fprintln(gtw, gpuLine(g))
		}
	}
	_ = htw.Flush()
	_ = gtw.Flush()
	hiveLines := strings.Split(strings.TrimSuffix(hb.String(), "\n"), "\n")
	gpuLines := strings.Split(strings.TrimSuffix(gb.String(), "\n"), "\n")
	fmt.Fprintf(w, "HIVES (%d)\n%s\n", len(hives), hiveLines[0])
	for i, h := range hives {
		fmt.Fprintln(w, hiveLines[i+1])
		for range h.GPUs {
			fmt.Fprintln(w, gpuLines[0])
			gpuLines = gpuLines[1:]
		}
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "WORKERS (%d)\n", len(workers))
	fmt.Fprintln(tw, "ID\tHIVE\tSTATUS\tHEALTH\tLIVENESS\tMODEL\tDEVICE\tSLOTS\tKV\tAGE\tUP\tREASON")
	for _, x := range workers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", termSafe(x.WorkerID), termSafe(x.HiveID), dash(string(x.Status)),
			dash(string(x.Health)), liveness(x.Received), dash(x.ModelID), dash(x.Device), x.SlotsBusy, x.SlotsTotal,
			kvCache(x.Worker), age(nowMs, x.ReceivedAtMs), age(nowMs, x.FirstSeenMs), dash(x.HealthReason))
	}
	_ = tw.Flush()
}

// kvCache renders a worker's KV-cache use ("63%", "63% asleep"), "-" when
// the engine does not report it.
func kvCache(w wire.Worker) string {
	s := "-"
	if w.KVCachePercent != nil {
		s = fmt.Sprintf("%.0f%%", *w.KVCachePercent)
	}
	if w.Sleeping {
		s += " asleep"
	}
	return s
}

// sortProblemsFirst orders workers and hives as the views show them:
// problems first, then names in natural order.
func sortProblemsFirst(workers []*wire.WorkerEntry, hives []*wire.HiveEntry) {
	slices.SortStableFunc(workers, fleet.CompareWorkers)
	slices.SortStableFunc(hives, fleet.CompareHives)
}

// formatEvent renders one live registry event as a line; a hive's line
// carries its machine stats.
func formatEvent(ev registry.Event) string {
	s := fmt.Sprintf("%s  %-12s %-6s %s", ev.At.Local().Format("15:04:05.000"), ev.Type, ev.Kind, ev.Key)
	switch {
	case ev.Worker != nil:
		x := ev.Worker
		s += fmt.Sprintf("  status=%s health=%s liveness=%s model=%s device=%s", x.Status, x.Health, liveness(x.Received), x.ModelID, x.Device)
		if x.HealthReason != "" {
			s += fmt.Sprintf(" reason=%q", x.HealthReason)
		}
		if ev.Previous != "" {
			s += " (was " + ev.Previous + ")"
		}
	case ev.Queen != nil:
		q := ev.Queen
		s += fmt.Sprintf("  state=%s backlog=%d entries=%d version=%s", q.State, q.Backlog, q.Entries, q.Version)
		if q.Reason != "" {
			s += fmt.Sprintf(" reason=%q", q.Reason)
		}
		if ev.Previous != "" {
			s += " (was " + ev.Previous + ")"
		}
	case ev.Hive != nil:
		h := ev.Hive
		s += fmt.Sprintf("  health=%s liveness=%s gpus=%d workers=%d cpu=%.1f%% ram=%s/%sGiB",
			h.Health, liveness(h.Received), len(h.GPUs), len(h.Workers)+h.WorkersOmitted, h.CPUPercent, gib(h.RAMUsedBytes), gib(h.RAMTotalBytes))
		if h.StatsStale {
			s += " stats=stale"
		}
		if h.HealthReason != "" {
			s += fmt.Sprintf(" reason=%q", h.HealthReason)
		}
	}
	return termSafe(s)
}

// formatHistoryEvent renders one event of the history as a line, dated:
// a history spans days.
func formatHistoryEvent(ev wire.Event) string {
	s := fmt.Sprintf("%s  %-12s %-6s %s", time.UnixMilli(ev.AtMs).Local().Format("2006-01-02 15:04:05.000"), ev.Event, ev.Kind, ev.Key)
	kv := func(k, v string) {
		if v != "" {
			s += " " + k + "=" + v
		}
	}
	s += " "
	kv("status", ev.Status)
	kv("health", ev.Health)
	kv("liveness", ev.Liveness)
	kv("model", ev.ModelID)
	if ev.HealthReason != "" {
		s += fmt.Sprintf(" reason=%q", ev.HealthReason)
	}
	if ev.Previous != "" {
		s += " (was " + ev.Previous + ")"
	}
	kv("queen", ev.QueenID)
	return termSafe(s)
}
