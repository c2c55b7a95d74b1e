package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
)

func runDecode(e *env, args []string) error {
	fs := newFlagSet(e, "decode")
	compact := fs.Bool("compact", true, "one line of JSON (false: indented)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	data, err := io.ReadAll(io.LimitReader(e.stdin, 16*wire.MaxPayload+1))
	if err != nil {
		return fmt.Errorf("read stdin: %w", err)
	}
	v, err := wire.DecodeAny(data)
	if err != nil {
		return fmt.Errorf("stdin is not msgpack: %w", err)
	}
	enc := json.NewEncoder(e.stdout)
	if !*compact {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

// openRegistry connects and returns a JetStream handle for the read-only tools.
func (c *common) openJetStream(e *env, name string) (jetstream.JetStream, func(), error) {
	log := c.logger(e)
	nc, err := c.connect(name, log)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}

func runStatus(e *env, args []string) error {
	var c common
	fs := newFlagSet(e, "status")
	c.register(fs, DefaultURL)
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	c.logLevel = "error"
	js, closeFn, err := c.openJetStream(e, "rbee-status")
	if err != nil {
		return err
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	workers, hives, err := registry.Snapshot(ctx, js, c.scheme())
	if err != nil {
		if registry.IsNotFound(err) {
			return fmt.Errorf("no registry at %s (is a queen running?): %w", c.natsURL, err)
		}
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"workers": workers, "hives": hives})
	}
	printStatus(e.stdout, workers, hives, time.Now())
	return nil
}

func age(nowMs, ms int64) string {
	if ms == 0 {
		return "-"
	}
	return (time.Duration(nowMs-ms) * time.Millisecond).Round(100 * time.Millisecond).String()
}

func gib(b uint64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<30)) }

func gpuSummary(gpus []wire.GPU) string {
	if len(gpus) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(gpus))
	for _, g := range gpus {
		s := fmt.Sprintf("%d:", g.Index)
		if g.VRAMUsedBytes != nil && g.VRAMTotalBytes != nil {
			s += gib(*g.VRAMUsedBytes) + "/" + gib(*g.VRAMTotalBytes) + "GiB"
		} else {
			s += "?GiB"
		}
		if g.TemperatureC != nil {
			s += fmt.Sprintf(" %.0fC", *g.TemperatureC)
		}
		if g.Health == wire.Degraded || g.Health == wire.Unhealthy {
			s += " " + string(g.Health)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// printStatus writes the registry as two tables.
func printStatus(w io.Writer, workers []*wire.WorkerEntry, hives []*wire.HiveEntry, now time.Time) {
	nowMs := now.UnixMilli()
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "HIVES (%d)\n", len(hives))
	fmt.Fprintln(tw, "ID\tAGE\tHEALTH\tCPU%\tRAM GiB\tGPUS (VRAM used/total, temp)\tWORKERS")
	for _, h := range hives {
		health := string(h.Health)
		if h.StatsStale {
			health += " (stale stats)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%s/%s\t%s\t%d\n", h.HiveID, age(nowMs, h.ReceivedAtMs), health,
			h.CPUPercent, gib(h.RAMUsedBytes), gib(h.RAMTotalBytes), gpuSummary(h.GPUs), len(h.Workers))
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "WORKERS (%d)\n", len(workers))
	fmt.Fprintln(tw, "ID\tHIVE\tSTATUS\tHEALTH\tMODEL\tDEVICE\tSLOTS\tAGE\tUP")
	sort.SliceStable(workers, func(i, j int) bool {
		if workers[i].HiveID != workers[j].HiveID {
			return workers[i].HiveID < workers[j].HiveID
		}
		return workers[i].WorkerID < workers[j].WorkerID
	})
	for _, x := range workers {
		model := x.ModelID
		if model == "" {
			model = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", x.WorkerID, x.HiveID, x.Status, x.Health, model,
			x.Device, x.SlotsBusy, x.SlotsTotal, age(nowMs, x.ReceivedAtMs), age(nowMs, x.FirstSeenMs))
	}
	_ = tw.Flush()
}

func runWatch(e *env, args []string) error {
	var c common
	fs := newFlagSet(e, "watch")
	c.register(fs, DefaultURL)
	asJSON := fs.Bool("json", false, "print one JSON object per event")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	js, closeFn, err := c.openJetStream(e, "rbee-watch")
	if err != nil {
		return err
	}
	defer closeFn()
	out := make(chan registry.Event, 1024)
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	w, err := registry.Watch(e.ctx, js, registry.Config{Scheme: c.scheme(), OnEvent: func(ev registry.Event) { out <- ev }})
	if err == nil {
		err = w.WaitReady(ctx)
	}
	cancel()
	if err != nil {
		if registry.IsNotFound(err) {
			return fmt.Errorf("no registry at %s (is a queen running?): %w", c.natsURL, err)
		}
		return err
	}
	defer w.Stop()
	nw, nh := w.Sizes()
	// The banner goes to stderr in JSON mode so stdout stays one event per line.
	banner := e.stdout
	if *asJSON {
		banner = e.stderr
	}
	fmt.Fprintf(banner, "watching %s: %d workers, %d hives live\n", c.natsURL, nw, nh)
	enc := json.NewEncoder(e.stdout)
	for {
		select {
		case <-e.ctx.Done():
			return nil
		case ev := <-out:
			if *asJSON {
				if err := enc.Encode(ev); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintln(e.stdout, formatEvent(ev))
		}
	}
}

// formatEvent renders one event as a human-readable line; a hive's line
// carries its machine stats.
func formatEvent(ev registry.Event) string {
	s := fmt.Sprintf("%s  %-9s %-6s %s", ev.At.Local().Format("15:04:05.000"), ev.Type, ev.Kind, ev.Key)
	switch {
	case ev.Worker != nil:
		s += fmt.Sprintf("  status=%s health=%s model=%s device=%s", ev.Worker.Status, ev.Worker.Health, ev.Worker.ModelID, ev.Worker.Device)
		if ev.Previous != "" {
			s += " (was " + ev.Previous + ")"
		}
	case ev.Hive != nil:
		h := ev.Hive
		s += fmt.Sprintf("  health=%s gpus=%d workers=%d cpu=%.1f%% ram=%s/%sGiB",
			h.Health, len(h.GPUs), len(h.Workers), h.CPUPercent, gib(h.RAMUsedBytes), gib(h.RAMTotalBytes))
		if h.StatsStale {
			s += " stats=stale"
		}
	}
	return s
}
