package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

// demoPrefix is the demo's prefix against an existing server unless
// --prefix says otherwise: its queen, hive and workers stay out of a real
// registry on that server.
const demoPrefix = "demo"

// demoHTTP is the demo's default web view address, the queen's default.
const demoHTTP = "127.0.0.1:8500"

func runDemo(e *env, args []string) error {
	c := common{logLevel: "error"}
	fs := newFlagSet(e, "demo")
	c.register(fs, "")
	listen := fs.String("listen", "127.0.0.1:4222", "embedded broker's client address (without --nats-url)")
	interval := fs.Duration("interval", time.Second, "heartbeat interval of the demo's hive and workers")
	missed := fs.Int("missed", 3, "missed beats before an entry expires")
	stay := fs.Bool("stay", false, "keep running after the demo until interrupted")
	httpAddr := fs.String("http", demoHTTP, "the queen's web view and HTTP API address, or off (a free port when the default is taken)")
	fs.Lookup("nats-url").Usage = "run against this existing NATS server instead of an embedded one (env NATS_URL); the prefix is then " + demoPrefix + " unless --prefix is given"
	if err := c.parse(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *missed < 2 || *missed > 100 || *interval < 100*time.Millisecond || *interval > time.Minute {
		return usagef("--missed must be 2 to 100 and --interval 100ms to 1m")
	}
	external := c.natsURL != ""
	if external && set["listen"] {
		return usagef("--listen starts an embedded broker; it does not go with --nats-url")
	}
	if !external && (c.creds != "" || c.nkey != "" || c.tlsCA != "" || c.tlsCert != "" || c.tlsKey != "") {
		return usagef("--creds, --nkey and --tls-* are for an existing server: give --nats-url too")
	}
	if external && !set["prefix"] {
		c.prefix = demoPrefix
	}
	// Each registry write's TTL is missed × interval in whole seconds, rounded up.
	ttl := (time.Duration(*missed) * *interval).Round(0)
	if r := ttl % time.Second; r != 0 {
		ttl += time.Second - r
	}
	log := c.logger(e)

	url := c.natsURL
	if !external {
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
			return fmt.Errorf("embedded broker on %s: %w", *listen, listenHint(err, "--listen", *listen))
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
	}
	// The queen's events are printed from its watcher's goroutine: one
	// lock keeps them from tearing the demo's own lines and tables.
	out := &syncWriter{w: e.stdout}
	where := "embedded broker " + url
	if external {
		where = "existing server " + url
	}
	fmt.Fprintf(out, "rbee demo: %s, prefix %s, beats every %s, entries expire after %s without a beat\n", where, c.prefix, *interval, ttl)
	fmt.Fprintf(out, "  watch it live from another terminal: nats sub '%s' --server %s\n", c.scheme().All(), url)

	connect := func(name string) (*natsConnCloser, error) {
		cfg := c.connConfig(name, log)
		cfg.URL = url
		nc, err := dial(cfg)
		return &natsConnCloser{nc}, err
	}
	events := make(chan registry.Event, 256)
	qc := queen.DefaultConfig()
	qc.Prefix, qc.Missed, qc.Version, qc.Logger = c.prefix, *missed, Version, log
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
		hs, err := startHTTP(e.ctx, *httpAddr, q, qconn.nc, log, nil)
		if err != nil && !set["http"] && errors.Is(err, syscall.EADDRINUSE) {
			// The default port is taken (a queen already running): any free one will do.
			hs, err = startHTTP(e.ctx, "127.0.0.1:0", q, qconn.nc, log, nil)
		}
		if err != nil {
			return listenHint(err, "--http", *httpAddr)
		}
		defer hs.Close()
		until := "until the demo ends; --stay keeps it up"
		if *stay {
			until = "until Ctrl-C"
		}
		fmt.Fprintf(out, "  web view: http://%s/  (%s)\n", hs.Addr(), until)
	}
	fmt.Fprintln(out)

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
	hc.Prefix, hc.Interval, hc.WorkerTTL, hc.Version, hc.Stats, hc.Logger = c.prefix, *interval, ttl, Version, stats.Fill, log
	h, err := hive.New(hconn.nc, hc)
	if err != nil {
		return err
	}
	if err := h.Start(e.ctx); err != nil {
		return err
	}
	defer h.Abandon()

	specs := []struct{ id, model, device string }{
		{"llama-0", "meta-llama/Llama-3.1-8B-Instruct", "cuda:0"},
		{"qwen-1", "Qwen/Qwen2.5-7B-Instruct", "cuda:1"},
		{"mistral-2", "mistralai/Mistral-7B-Instruct-v0.3", "cpu"},
	}
	workers := map[string]*worker.Worker{}
	wconns := map[string]*natsConnCloser{} // one connection each, as separate processes would have
	for _, s := range specs {
		wconn, err := connect("rbee-worker-" + s.id)
		if err != nil {
			return err
		}
		defer wconn.Close()
		wconns[s.id] = wconn
		wc := worker.DefaultConfig("demo-hive", s.id)
		wc.Prefix, wc.Interval, wc.ModelID, wc.Device, wc.Version, wc.SlotsTotal = c.prefix, *interval, s.model, s.device, Version, 4
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
		var b bytes.Buffer
		printStatus(&b, q.Registry().Workers(), q.Registry().Hives(), time.Now())
		_, _ = out.Write(b.Bytes())
		fmt.Fprintln(out)
	}
	step := func(msg string) { fmt.Fprintf(out, "\n>>> %s\n", msg) }

	step("starting one hive and three workers")
	for _, w := range workers {
		_ = w.SetStatus(wire.StatusReady, wire.Healthy, "")
	}
	_ = workers["llama-0"].SetStatus(wire.StatusBusy, wire.Healthy, "")
	workers["llama-0"].SetSlotsBusy(2)
	_ = workers["llama-0"].SetProgress(4096) // tokens generated; it stops growing: a hung engine
	frozeAt := time.Now()
	if err := wait("all workers in the hive's view", func() bool {
		hs := q.Registry().Hives()
		nw, _ := q.Registry().Sizes()
		return nw == 3 && len(hs) == 1 && len(hs[0].Workers) == 3
	}); err != nil {
		return err
	}
	table("registry")

	step(fmt.Sprintf("killing qwen-1 without a goodbye: disconnected at once, expired %s after its last beat", ttl))
	workers["qwen-1"].Abandon()
	wconns["qwen-1"].Close() // as a crash closes the process's connection
	killed := time.Now()
	if err := wait("qwen-1 disconnected", func() bool {
		e, _, ok := q.Registry().Worker("demo-hive.qwen-1")
		return !ok || e.Liveness == wire.LivenessDisconnected
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "    qwen-1 disconnected %s after the kill\n", time.Since(killed).Round(time.Millisecond))
	if err := wait("qwen-1 expiry", func() bool { return !hasWorker(q, "demo-hive", "qwen-1") }); err != nil {
		return err
	}
	fmt.Fprintf(out, "    qwen-1 expired %.1fs after it stopped beating\n", time.Since(killed).Seconds())

	step(fmt.Sprintf("llama-0 hangs: busy, its token counter stops; stalled after 3 of its intervals (%s)", 3**interval))
	if err := wait("llama-0 stalled", func() bool {
		e, _, ok := q.Registry().Worker("demo-hive.llama-0")
		return ok && e.Liveness == wire.LivenessStalled
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "    llama-0 stalled %.1fs after its progress froze\n", time.Since(frozeAt).Seconds())
	workers["llama-0"].AddProgress(128)
	if err := wait("llama-0 recovered", func() bool {
		e, _, ok := q.Registry().Worker("demo-hive.llama-0")
		return ok && e.Liveness != wire.LivenessStalled
	}); err != nil {
		return err
	}
	fmt.Fprintln(out, "    llama-0 recovered when its counter grew again")

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
	if external {
		fmt.Fprintf(out, "the demo's buckets %s and %s stay on %s\n", c.scheme().WorkersBucket(), c.scheme().HivesBucket(), url)
	}
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

// syncWriter serialises writes to w; each Write reaches w whole.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
