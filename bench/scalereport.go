package main

import (
	"errors"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// per100k returns v per 100k workers of r.
func (r scaleRow) per100k(v float64) float64 { return v / float64(r.Workers) * 1e5 }

func mibOf(b int64) float64 { return float64(b) / (1 << 20) }

// sizeName is 10k, 300k, 1M.
func sizeName(n int) string {
	switch {
	case n >= 1e6 && n%1e6 == 0:
		return fmt.Sprintf("%dM", n/1e6)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// scaleTargets are issue 19's goals, judged on the largest size run.
func scaleTargets(s *scaleResult) []target {
	var ts []target
	for _, r := range s.Rows {
		ts = append(ts, target{fmt.Sprintf("scale, %s workers: false expiries", sizeName(r.Workers)), "0",
			fmt.Sprintf("%d (killed %d, expired %d)", r.False+r.SampleFalse+r.HiveExpired, r.Killed[0], r.Killed[1]),
			r.False == 0 && r.SampleFalse == 0 && r.HiveExpired == 0 && r.Killed[0] == r.Killed[1]})
		if r.Workers >= 1e6 {
			ts = append(ts,
				target{"scale, 1M workers: queen + broker CPU", "< 1 core", fmt.Sprintf("%.2f cores", r.TotalCores), r.TotalCores < 1},
				target{"scale, 1M workers: expiry beyond the TTL", "p99 ≤ 1 s", fmt.Sprintf("p99 %.0f ms (n %d)", r.Lateness.P99ms, r.Lateness.N),
					r.Lateness.N == r.Killed[0] && r.Lateness.N > 0 && r.Lateness.P99ms <= 1000})
		}
	}
	return ts
}

// scaleSection writes the scale phase's part of BENCHMARKS.md; plot is the
// PNG's path relative to the report.
func scaleSection(p func(string, ...any), s *scaleResult, plotPath string) {
	p("## 3. Scale: the registry at the default intervals\n\n")
	p("Each part in its own process on loopback, as an operator runs it: `nats-server -js` (this module's version, a\n")
	p("temporary store), `rbee queen --nats-url …` with its defaults (an entry expires after %v of its intervals), and a\n", s.Settings["missed"])
	p("load generator (`go run ./bench -role scale-load`, started by the bench). The generator publishes pre-encoded worker\n")
	p("beats (`wire.Marshal`; seq and sent_at_ms written in place) every %v, each worker at its own phase so that the beats\n", s.Settings["worker_interval"])
	p("are spread evenly over the interval, and one beat per hive (%v workers each) every %v carrying the hive's view of\n", s.Settings["workers_per_hive"], s.Settings["hive_interval"])
	p("its workers (8 GPUs, each worker's status and last beat; encoded per beat). At most %v workers join per\n", s.Settings["join_rate"])
	p("second; once all have joined the fleet runs one interval more (a lone queen's first refreshes fall due then), then\n")
	p("is held %v intervals, the window every figure below is read over.\n", s.Settings["hold_intervals"])
	p("The server has no system account, as a plain `nats-server -js`: the queen says once that crash detection falls\n")
	p("back to the TTL, which is all this phase relies on.\n\n")
	p("- **CPU**: utime + stime of each process (`/proc/PID/stat`) over the window ÷ its wall time, in cores.\n")
	p("- **RSS**: `VmRSS` at the window's end; peak is `VmHWM` over the process's life (joining included).\n")
	p("- **KV writes/s**: the last sequence of each bucket's stream over the window (values and markers).\n")
	p("- **change → KV**: %v workers change status (ready, ready, busy, busy, …) every second beat. A reader in the bench\n", s.Settings["change_sample"])
	p("  (an ordered consumer filtered to the sampled workers' hives) takes the stored message's server timestamp minus the\n")
	p("  sent_at_ms of the beat that changed. **refresh age**: the same for the sample's unchanged writes (how old the\n")
	p("  stored beat is when it is written).\n")
	p("- **expiry beyond the TTL**: %v workers stop beating, without a goodbye, the moment all have joined; the purge\n", s.Settings["kill_sample"])
	p("  marker's server timestamp minus (their last beat + the TTL); a negative figure is an expiry before the TTL ran out.\n")
	p("- **false expiries**: the queen's `rbee_registry_events_total{kind=\"worker\",event=\"expired\"}` over the run minus\n")
	p("  the killed workers whose expiry was seen, plus expiries of the sampled changing workers and of hives; must be 0.\n")
	p("  At the end `rbee_registry_entries{kind=\"worker\"}` must be the fleet less the killed.\n\n")
	p("| | |\n|---|---|\n| machine | %s |\n| flags | `%s` |\n| date | %s |\n| wall time | %s |\n", s.Machine, s.Command, s.Date, s.WallTime)
	p("| load average (1, 5, 15 min) | %s at the start, %s at the end |\n\n", s.LoadStart, s.LoadEnd)
	if len(s.Rows) > 0 {
		p("| workers | hives | queen CPU | broker CPU | together | queen RSS (peak) | broker RSS (peak) | worker KV writes/s | change → KV p99 | expiry beyond TTL min / p99 / max | false expiries |\n")
		p("|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, r := range s.Rows {
			p("| %s | %d | %.3f | %.3f | **%.3f** | %.0f MiB (%.0f) | %.0f MiB (%.0f) | %.0f | %.0f ms | %.0f / %.0f / %.0f ms | %d |\n",
				sizeName(r.Workers), r.Hives, r.QueenCores, r.BrokerCores, r.TotalCores, mibOf(r.QueenRSS), mibOf(r.QueenPeak),
				mibOf(r.BrokerRSS), mibOf(r.BrokerPeak), r.Writes, r.ChangeLag.P99ms, r.Lateness.MinMs, r.Lateness.P99ms, r.Lateness.MaxMs,
				r.False+r.SampleFalse+r.HiveExpired)
		}
		p("\n**Cost per 100k workers** (the figure ÷ workers × 100k):\n\n")
		p("| workers | queen cores | broker cores | together | queen MiB | broker MiB | together MiB |\n|---|---|---|---|---|---|---|\n")
		for _, r := range s.Rows {
			p("| %s | %.3f | %.3f | %.3f | %.0f | %.0f | %.0f |\n", sizeName(r.Workers), r.per100k(r.QueenCores), r.per100k(r.BrokerCores),
				r.per100k(r.TotalCores), r.per100k(mibOf(r.QueenRSS)), r.per100k(mibOf(r.BrokerRSS)), r.per100k(mibOf(r.QueenRSS+r.BrokerRSS)))
		}
		if len(s.Rows) > 1 {
			p("\n**Marginal cost per 100k workers** between consecutive sizes (the difference ÷ the difference in workers ×\n")
			p("100k), which leaves out what a queen and a broker cost with no fleet:\n\n")
			p("| from → to | queen cores | broker cores | together | queen MiB | broker MiB | together MiB |\n|---|---|---|---|---|---|---|\n")
			for i := 1; i < len(s.Rows); i++ {
				a, b := s.Rows[i-1], s.Rows[i]
				d := func(f func(scaleRow) float64) float64 { return (f(b) - f(a)) / float64(b.Workers-a.Workers) * 1e5 }
				p("| %s → %s | %.3f | %.3f | %.3f | %.0f | %.0f | %.0f |\n", sizeName(a.Workers), sizeName(b.Workers),
					d(func(r scaleRow) float64 { return r.QueenCores }), d(func(r scaleRow) float64 { return r.BrokerCores }),
					d(func(r scaleRow) float64 { return r.TotalCores }), d(func(r scaleRow) float64 { return mibOf(r.QueenRSS) }),
					d(func(r scaleRow) float64 { return mibOf(r.BrokerRSS) }), d(func(r scaleRow) float64 { return mibOf(r.QueenRSS + r.BrokerRSS) }))
			}
		}
		if plotPath != "" {
			p("\n![CPU in cores and RSS in MiB of the queen and the broker against the number of workers](%s)\n", plotPath)
		}
		p("\n")
		for _, r := range s.Rows {
			scaleDetail(p, r, fmt.Sprintf("### %s workers", sizeName(r.Workers)))
		}
	}
	if c := s.Cluster; c != nil {
		p("### A 3-server cluster with three queens, %s workers\n\n", sizeName(c.Workers))
		p("Three `nats-server -js` processes in one cluster on loopback, R3 buckets (`rbee queen --replicas 3`), one queen\n")
		p("connected to each server (one queue group: each beat reaches one of them). The generator publishes to the first\n")
		p("server, the sample reader reads from the last. Each queen's KV writes/s are its acknowledged writes\n")
		p("(`rbee_queen_kv_write_seconds_count`) over the window.\n\n")
		if len(s.Rows) > 0 {
			if one := nearest(s.Rows, c.Workers); one != nil {
				p("Against one server and one queen at %s workers: queens %.3f → %.3f cores, brokers %.3f → %.3f cores,\n",
					sizeName(one.Workers), one.QueenCores, c.QueenCores, one.BrokerCores, c.BrokerCores)
				p("together %.3f → %.3f cores (×%.1f); RSS together %.0f → %.0f MiB.\n\n", one.TotalCores, c.TotalCores,
					c.TotalCores/one.TotalCores, mibOf(one.QueenRSS+one.BrokerRSS), mibOf(c.QueenRSS+c.BrokerRSS))
			}
		}
		scaleDetail(p, *c, "")
	}
}

// nearest returns the row with exactly n workers, or nil.
func nearest(rows []scaleRow, n int) *scaleRow {
	for i := range rows {
		if rows[i].Workers == n {
			return &rows[i]
		}
	}
	return nil
}

// scaleDetail writes one run's processes, sample figures and counters.
func scaleDetail(p func(string, ...any), r scaleRow, title string) {
	if title != "" {
		p("%s\n\n", title)
	}
	p("%d workers in %d hives; join %.0f s at %.0f workers/s; window %.1f s (load average %.1f → %.1f). Worker beat %d B,\n",
		r.Workers, r.Hives, r.JoinS, r.JoinRate, r.WindowS, r.Load1[0], r.Load1[1], r.WorkerBytes)
	took := ""
	if r.Generator.Cores > 0 {
		took = fmt.Sprintf(" took %.3f cores and", r.Generator.Cores)
	}
	p("hive beat %d B. Sent over the window: %.0f worker beats/s, %.1f hive beats/s; the generator%s was at\n",
		r.HiveBytes, r.Beats, r.HiveBeats, took)
	p("most %.0f ms behind its timetable.\n\n| process | CPU (cores) | RSS | peak RSS | Go heap in use (next GC at) | KV writes/s |\n|---|---|---|---|---|---|\n", r.Generator.BehindMs)
	for _, pr := range r.Procs {
		w, heap := "", ""
		if strings.HasPrefix(pr.Name, "queen") {
			w = fmt.Sprintf("%.0f", pr.Writes)
		}
		if pr.HeapInuse > 0 {
			heap = fmt.Sprintf("%.0f MiB (%.0f MiB)", mibOf(pr.HeapInuse), mibOf(pr.NextGC))
		}
		p("| %s | %.3f | %.0f MiB | %.0f MiB | %s | %s |\n", pr.Name, pr.Cores, mibOf(pr.RSS), mibOf(pr.Peak), heap, w)
	}
	p("\n| | n | min | p50 | p99 | max |\n|---|---|---|---|---|---|\n")
	row := func(name string, v percentile) {
		p("| %s | %d | %.1f ms | %.1f ms | %.1f ms | %.1f ms |\n", name, v.N, v.MinMs, v.P50ms, v.P99ms, v.MaxMs)
	}
	row(fmt.Sprintf("change beat → KV (%d sent in the window, %d written, %d with a later beat)", r.Changes[0], r.Changes[1], r.ViaLater), r.ChangeLag)
	row(fmt.Sprintf("refresh: age of the stored beat when written (%d writes)", r.Refreshes), r.RefreshAge)
	row(fmt.Sprintf("killed: last beat + TTL %.0f s → purge marker (%d killed, %d expired)", r.TTLs, r.Killed[0], r.Killed[1]), r.Lateness)
	p("\nKV writes/s over the window: workers bucket %.0f, hives bucket %.1f. False expiries: %d (queen's count less the\n", r.Writes, r.HiveWrites, r.False)
	p("killed), %d among the changing sample, %d hives. Worker entries at the end: %d (want %d).\n\n", r.SampleFalse, r.HiveExpired, r.Live[1], r.Live[0])
	p("Queen counters over the run (all queens), then how far behind they were as the window closed:")
	for i, c := range r.Counters {
		sep := ","
		if i == 0 {
			sep = ""
		}
		mark := ""
		if c.Bad && c.Value > 0 {
			mark = " **(must be 0)**"
		}
		p("%s %s %.0f%s", sep, c.Name, c.Value, mark)
	}
	p(".\n\n")
	if len(r.Profiles) > 0 {
		p("CPU by activity over the window (`-scale-perf`: `perf record -F 499 -g`, user and kernel stacks; a sample counts\n")
		p("for the first activity with a frame on its stack, the scheduler's and the collector's own first; perf's own load\n")
		p("is in the figures above):\n\n| activity |")
		for _, pf := range r.Profiles {
			p(" %s (%d samples) |", pf.Name, pf.Samples)
		}
		p("\n|---|%s\n", strings.Repeat("---|", len(r.Profiles)))
		var names []string
		for _, pf := range r.Profiles {
			for _, sh := range pf.Split {
				if !slices.Contains(names, sh.Name) {
					names = append(names, sh.Name)
				}
			}
		}
		for _, name := range names {
			p("| %s |", name)
			for _, pf := range r.Profiles {
				i := slices.IndexFunc(pf.Split, func(sh share) bool { return sh.Name == name })
				if i < 0 {
					p(" |")
					continue
				}
				p(" %.1f %% |", pf.Split[i].Percent)
			}
			p("\n")
		}
		p("\n")
	}
	for _, pr := range r.Problems {
		p("**Problem:** %s\n\n", strings.ReplaceAll(pr, "\n", " "))
	}
}

// writeScalePlot draws CPU and RSS against workers into a PNG at path.
func writeScalePlot(s *scaleResult, path string) error {
	if len(s.Rows) == 0 {
		return nil
	}
	cpu, rss := plot.New(), plot.New()
	var ticks plot.ConstantTicks
	for _, r := range s.Rows {
		ticks = append(ticks, plot.Tick{Value: float64(r.Workers), Label: sizeName(r.Workers)})
	}
	cpu.Title.Text, rss.Title.Text = "CPU over the window", "RSS at the window's end"
	cpu.Y.Label.Text, rss.Y.Label.Text = "cores", "MiB"
	for _, pl := range []*plot.Plot{cpu, rss} {
		pl.X.Label.Text = "workers (log scale)"
		pl.X.Scale, pl.X.Tick.Marker = plot.LogScale{}, ticks
		pl.Y.Min = 0
		pl.Add(plotter.NewGrid())
		pl.Legend.Top, pl.Legend.Left = true, true
	}
	series := func(pl *plot.Plot, name string, c color.Color, shape draw.GlyphDrawer, y func(scaleRow) float64) error {
		xy := make(plotter.XYs, len(s.Rows))
		for i, r := range s.Rows {
			xy[i].X, xy[i].Y = float64(r.Workers), y(r)
			pl.Y.Max = max(pl.Y.Max, xy[i].Y*1.35) // room for the legend
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		l.Color, pts.Color, pts.Shape = c, c, shape
		pl.Add(l, pts)
		pl.Legend.Add(name, l, pts)
		return nil
	}
	blue, orange, black := color.RGBA{31, 119, 180, 255}, color.RGBA{255, 127, 14, 255}, color.RGBA{0, 0, 0, 255}
	err := errors.Join(
		series(cpu, "queen", blue, draw.CircleGlyph{}, func(r scaleRow) float64 { return r.QueenCores }),
		series(cpu, "broker", orange, draw.SquareGlyph{}, func(r scaleRow) float64 { return r.BrokerCores }),
		series(cpu, "together", black, draw.TriangleGlyph{}, func(r scaleRow) float64 { return r.TotalCores }),
		series(rss, "queen", blue, draw.CircleGlyph{}, func(r scaleRow) float64 { return mibOf(r.QueenRSS) }),
		series(rss, "broker", orange, draw.SquareGlyph{}, func(r scaleRow) float64 { return mibOf(r.BrokerRSS) }),
		series(rss, "together", black, draw.TriangleGlyph{}, func(r scaleRow) float64 { return mibOf(r.QueenRSS + r.BrokerRSS) }),
	)
	if err != nil {
		return err
	}
	for _, pl := range []*plot.Plot{cpu, rss} {
		// Leave room on both sides of the points.
		pl.X.Min, pl.X.Max = pl.X.Min/1.5, pl.X.Max*1.5
	}
	img := vgimg.New(2*5*vg.Inch, 4*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadY: vg.Centimeter / 2, PadLeft: vg.Centimeter / 4,
		PadRight: vg.Centimeter / 2, PadTop: vg.Centimeter / 4, PadBottom: vg.Centimeter / 4}
	plots := [][]*plot.Plot{{cpu, rss}}
	canvases := plot.Align(plots, tiles, dc)
	cpu.Draw(canvases[0][0])
	rss.Draw(canvases[0][1])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
