package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

func runDemo(e *env, args []string) error {
	c := common{logLevel: "error"}
	fs := newFlagSet(e, "demo")
	c.register(fs, "")
	listen := fs.String("listen", "127.0.0.1:4222", "embedded broker's client address")
	interval := fs.Duration("interval", time.Second, "heartbeat interval of the demo's hive and workers")
	missed := fs.Int("missed", 3, "missed beats before an entry expires")
	stay := fs.Bool("stay", false, "keep running after the demo until interrupted")
	httpAddr := fs.String("http", "off", "queen HTTP API address, or off")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *missed < 1 || *interval < 100*time.Millisecond {
		return usagef("--missed must be at least 1 and --interval at least 100ms")
	}
	ttl := time.Duration(*missed) * *interval
	log := c.logger(e)
	dir, err := os.MkdirTemp("", "rbee-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	qf := queenFlags{listen: *listen, data: dir}
	ec, err := qf.embeddedConfig(log)
	if err != nil {
		return err
	}
	srv, err := embedded.New(ec)
	if err != nil {
		return fmt.Errorf("embedded broker on %s: %w", *listen, err)
	}
	defer srv.Shutdown()
	url := srv.ClientURL()
	out := e.stdout
	fmt.Fprintf(out, "rbee demo: broker %s, beats every %s, entries expire after %s without a beat\n", url, *interval, ttl)
	fmt.Fprintf(out, "  watch it live from another terminal: nats sub 'rbee.hb.>' --server %s\n\n", url)

	connect := func(name string) (*natsConnCloser, error) {
		cfg := natsconn.DefaultConfig(url, name)
		cfg.Logger = log
		nc, err := natsconn.Connect(cfg)
		return &natsConnCloser{nc}, err
	}
	events := make(chan registry.Event, 256)
	qc := queen.DefaultConfig()
	qc.Logger = log
	qc.OnEvent = func(ev registry.Event) {
		fmt.Fprintln(out, formatEvent(ev))
		events <- ev
	}
	qconn, err := connect("rbee-queen")
	if err != nil {
		return err
	}
	defer qconn.Close()
	q, err := queen.New(qconn.nc, qc)
	if err != nil {
		return err
	}
	if err := q.Start(e.ctx); err != nil {
		return err
	}
	defer q.Stop(context.Background())
	if *httpAddr != "off" {
		hs, err := serveHTTP(*httpAddr, q, log)
		if err != nil {
			return err
		}
		defer hs.Close()
	}

	stats, err := startStats(e.ctx, *interval, log)
	if err != nil {
		return err
	}
	defer stats.Stop()
	hconn, err := connect("rbee-hive")
	if err != nil {
		return err
	}
	defer hconn.Close()
	hc := hive.DefaultConfig("demo-hive")
	hc.Interval, hc.WorkerTTL, hc.Version, hc.Stats, hc.Logger = *interval, ttl, Version, stats.Fill, log
	h, err := hive.New(hconn.nc, hc)
	if err != nil {
		return err
	}
	if err := h.Start(e.ctx); err != nil {
		return err
	}
	defer h.Abandon()

	wconn, err := connect("rbee-workers")
	if err != nil {
		return err
	}
	defer wconn.Close()
	specs := []struct{ id, model, device string }{
		{"llama-0", "meta-llama/Llama-3.1-8B-Instruct", "cuda:0"},
		{"qwen-1", "Qwen/Qwen2.5-7B-Instruct", "cuda:1"},
		{"mistral-2", "mistralai/Mistral-7B-Instruct-v0.3", "cpu"},
	}
	workers := map[string]*worker.Worker{}
	for _, s := range specs {
		wc := worker.DefaultConfig("demo-hive", s.id)
		wc.Interval, wc.ModelID, wc.Device, wc.Version, wc.SlotsTotal = *interval, s.model, s.device, Version, 4
		wc.URL = "http://127.0.0.1:9000/" + s.id
		w, err := worker.New(wconn.nc, wc)
		if err != nil {
			return err
		}
		if err := w.Start(e.ctx); err != nil {
			return err
		}
		defer w.Abandon()
		workers[s.id] = w
	}
	wait := func(what string, cond func() bool) error {
		deadline := time.After(ttl + 10*time.Second)
		for !cond() {
			select {
			case <-e.ctx.Done():
				return e.ctx.Err()
			case <-deadline:
				return fmt.Errorf("demo: %s did not happen in time", what)
			case <-events:
			case <-time.After(50 * time.Millisecond):
			}
		}
		return nil
	}
	table := func(title string) {
		fmt.Fprintf(out, "\n--- %s ---\n", title)
		printStatus(out, q.Registry().Workers(), q.Registry().Hives(), time.Now())
		fmt.Fprintln(out)
	}
	step := func(msg string) { fmt.Fprintf(out, "\n>>> %s\n", msg) }

	step("starting one hive and three workers")
	for _, w := range workers {
		_ = w.SetStatus(wire.StatusReady, wire.Healthy, "")
	}
	_ = workers["llama-0"].SetStatus(wire.StatusBusy, wire.Healthy, "")
	workers["llama-0"].SetSlotsBusy(2)
	if err := wait("all workers in the hive's view", func() bool {
		hs := q.Registry().Hives()
		nw, _ := q.Registry().Sizes()
		return nw == 3 && len(hs) == 1 && len(hs[0].Workers) == 3
	}); err != nil {
		return err
	}
	table("registry")

	step(fmt.Sprintf("killing qwen-1 without a goodbye: it expires %s after its last beat", ttl))
	workers["qwen-1"].Abandon()
	killed := time.Now()
	if err := wait("qwen-1 expiry", func() bool { return !hasWorker(q, "demo-hive", "qwen-1") }); err != nil {
		return err
	}
	fmt.Fprintf(out, "    qwen-1 expired %.1fs after it stopped beating\n", time.Since(killed).Seconds())

	step("stopping mistral-2 gracefully: its goodbye removes it at once")
	stopped := time.Now()
	if err := stopGracefully(workers["mistral-2"].Stop); err != nil {
		return err
	}
	if err := wait("mistral-2 leaving", func() bool { return !hasWorker(q, "demo-hive", "mistral-2") }); err != nil {
		return err
	}
	fmt.Fprintf(out, "    mistral-2 left %s after its goodbye\n", time.Since(stopped).Round(time.Millisecond))
	if err := wait("the hive's view to follow", func() bool {
		hs := q.Registry().Hives()
		return len(hs) == 1 && len(hs[0].Workers) == 1
	}); err != nil {
		return err
	}
	table("registry")
	st := q.Stats()
	fmt.Fprintf(out, "queen: %d worker beats and %d hive beats accepted, %d events\n",
		st.Accepted["worker"], st.Accepted["hive"], st.Events[registry.Joined]+st.Events[registry.Updated]+st.Events[registry.Left]+st.Events[registry.Expired]+st.Events[registry.Restarted])
	if *stay {
		fmt.Fprintln(out, "\nstill running; press Ctrl-C to stop")
		<-e.ctx.Done()
	}
	_ = stopGracefully(workers["llama-0"].Stop)
	_ = stopGracefully(h.Stop)
	return nil
}

func hasWorker(q *queen.Queen, hiveID, workerID string) bool {
	for _, w := range q.Registry().Workers() {
		if w.HiveID == hiveID && w.WorkerID == workerID {
			return true
		}
	}
	return false
}
