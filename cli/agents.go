package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/engine"
	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

func runHive(e *env, args []string) error {
	var c common
	fs := newFlagSet(e, "hive")
	c.register(fs, DefaultURL)
	hiveID := fs.String("hive-id", "", "this hive's ID ([A-Za-z0-9_-]{1,64}, required)")
	interval := fs.Duration("interval", 30*time.Second, "heartbeat interval")
	missed := fs.Int("missed", 3, "drop a worker from the hive's view after this many of its own intervals without a beat")
	workerTTL := fs.Duration("worker-ttl", 0, "drop every worker after this long without a beat instead (default: --missed × each worker's interval)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if err := subjects.ValidateID("--hive-id", *hiveID); err != nil {
		return usageError{err.Error()}
	}
	if err := checkTokenFor(c.token, *hiveID, ""); err != nil {
		return err
	}
	log := c.logger(e)
	hc := hive.DefaultConfig(*hiveID)
	hc.Prefix, hc.Interval, hc.Version, hc.Logger = c.prefix, *interval, Version, log
	hc.Missed, hc.WorkerTTL = *missed, *workerTTL
	if ms := interval.Milliseconds(); *interval%time.Millisecond != 0 || ms < wire.MinIntervalMs || ms > wire.MaxIntervalMs {
		return usagef("--interval %s: want %dms to %dms", *interval, wire.MinIntervalMs, wire.MaxIntervalMs)
	}
	if err := hc.Validate(); err != nil {
		return usageError{err.Error()}
	}
	stats, err := hiveStats(e.ctx, *interval, log)
	if err != nil {
		return err
	}
	defer stats.Stop()
	hc.Stats, hc.Processes = stats.Fill, stats.Processes
	nc, err := c.connectWaiting(e.ctx, "rbee-hive-"+*hiveID, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	h, err := hive.New(nc, hc)
	if err != nil {
		return usageError{err.Error()}
	}
	stats.OnEvent(h.Beat)
	if err := h.Start(e.ctx); err != nil {
		return err
	}
	if err := checkAllowed(e.ctx, nc, c.scheme().Hive(*hiveID), func() uint64 { return h.Stats().Sent }); err != nil {
		h.Abandon()
		return err
	}
	log.Info("hive beating", "hive", *hiveID, "subject", c.scheme().Hive(*hiveID), "interval", *interval)
	c.watchQueens(e.ctx, nc, *interval, log)
	<-e.ctx.Done()
	return stopGracefully(h.Stop)
}

// hiveStats starts the hive's stats source; tests replace it to read GPUs
// through go-nvml's mock.
var hiveStats = startStats

func stopGracefully(stop func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return stop(ctx)
}

// workerFlags holds rbee worker's own flags.
type workerFlags struct {
	hiveID, workerID       string
	interval               time.Duration
	model, device, url     string
	slots, simulate, hang  int
	pid                    int
	stopGrace              time.Duration
	engine, engineURL      string
	healthPath, metrics    string
	running, waiting, toks string
	probeEvery, probeLimit time.Duration
	grace, startGrace      time.Duration
	apiKey                 string
}

// EngineAPIKeyEnv names the environment variable that gives the engine's API
// key when --engine-api-key is not set.
const EngineAPIKeyEnv = "RBEE_ENGINE_API_KEY"

func (f *workerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.hiveID, "hive-id", "", "the hive this worker runs on (required)")
	fs.StringVar(&f.workerID, "worker-id", "", "this worker's ID (required); with --simulate, the prefix of the IDs")
	fs.DurationVar(&f.interval, "interval", 30*time.Second, "heartbeat interval, 10ms to 3600000ms")
	fs.StringVar(&f.model, "model", "", "model the worker serves (default: what the engine reports)")
	fs.StringVar(&f.device, "device", "cpu", "device the worker runs on, e.g. cuda:0")
	fs.StringVar(&f.url, "url", "", "the worker's inference URL (default: --engine-url)")
	fs.IntVar(&f.slots, "slots", 1, "concurrent request slots (match the engine: vLLM --max-num-seqs, llama-server --parallel)")
	fs.IntVar(&f.simulate, "simulate", 0, "run N simulated workers <worker-id>-0 … <worker-id>-(N-1) that change between ready and busy")
	fs.IntVar(&f.hang, "simulate-hang", 0, "with --simulate: K of the simulated workers go busy and their progress freezes (the queen marks them stalled)")
	fs.IntVar(&f.pid, "pid", 0, "the engine's process ID, so the hive can tell its GPU memory (set by itself under supervision)")
	fs.DurationVar(&f.stopGrace, "stop-grace", engine.DefaultStopGrace, "under supervision: how long the engine may take to exit after SIGTERM/SIGINT before it is killed")
	fs.StringVar(&f.engine, "engine", "", "probe the engine: "+kindNames())
	fs.StringVar(&f.engineURL, "engine-url", "", "the engine's base URL, e.g. http://127.0.0.1:8000 (required with --engine)")
	fs.StringVar(&f.healthPath, "engine-health-path", "", "generic engine: health path answering 2xx (default /health)")
	fs.StringVar(&f.metrics, "engine-metrics-path", "", "generic engine: Prometheus metrics path (default /metrics)")
	fs.StringVar(&f.running, "engine-running", "", "generic engine: gauge of running requests")
	fs.StringVar(&f.waiting, "engine-waiting", "", "generic engine: gauge of queued requests")
	fs.StringVar(&f.toks, "engine-tokens", "", "generic engine: counter that grows on every decode step (progress)")
	fs.DurationVar(&f.probeEvery, "engine-interval", 0, "time between engine probes (default --interval)")
	fs.DurationVar(&f.probeLimit, "engine-timeout", 0, "time one probe may take (default 5s, at most --engine-interval)")
	fs.DurationVar(&f.grace, "engine-grace", engine.DefaultGrace, "an engine failing its probes this long after its last good one is reported stopped")
	fs.DurationVar(&f.startGrace, "engine-start-grace", engine.DefaultStartGrace, "the same before its first good probe (model loading)")
	fs.StringVar(&f.apiKey, "engine-api-key", "", "API key the engine was started with (llama-server/vLLM --api-key), sent as Authorization: Bearer; default $"+EngineAPIKeyEnv+" (preferred: a flag shows in ps), never logged")
}

func kindNames() string {
	names := make([]string, len(engine.Kinds))
	for i, k := range engine.Kinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}

// engineConfig builds the probe settings, or nil without --engine.
func (f *workerFlags) engineConfig(log *slog.Logger) (*engine.Config, error) {
	generic := f.healthPath != "" || f.metrics != "" || f.running != "" || f.waiting != "" || f.toks != ""
	if f.engine == "" {
		if f.engineURL != "" || generic {
			return nil, usagef("--engine-url and the --engine-… names need --engine")
		}
		return nil, nil
	}
	spec, err := engine.Preset(engine.Kind(f.engine))
	if err != nil {
		return nil, usagef("--engine %q: want one of %s", f.engine, kindNames())
	}
	if generic && spec.Kind != engine.Generic {
		return nil, usagef("--engine-health-path, --engine-metrics-path and the metric names are for --engine generic; %s has its own", f.engine)
	}
	if f.healthPath != "" {
		spec.HealthPath = f.healthPath
	}
	if f.metrics != "" {
		spec.MetricsPath = f.metrics
	}
	spec.Running, spec.Waiting, spec.Progress = cmp.Or(f.running, spec.Running), cmp.Or(f.waiting, spec.Waiting), cmp.Or(f.toks, spec.Progress)
	spec.Grace, spec.StartGrace = f.grace, f.startGrace
	if f.engineURL == "" {
		return nil, usagef("--engine %s needs --engine-url", f.engine)
	}
	c := engine.DefaultConfig(spec, f.engineURL)
	c.Interval = cmp.Or(f.probeEvery, f.interval)
	c.Timeout = cmp.Or(f.probeLimit, min(c.Timeout, c.Interval))
	c.Logger = log
	c.APIKey = cmp.Or(f.apiKey, os.Getenv(EngineAPIKeyEnv))
	if err := c.Validate(); err != nil {
		return nil, usageError{err.Error()}
	}
	return &c, nil
}

// splitCommand splits rbee worker's arguments at "--": flags before, the
// engine's command line after.
func splitCommand(args []string) (flags, command []string) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:]
		}
	}
	return args, nil
}

// workerConfigs validates every flag and returns one Config per worker,
// before anything connects.
func (f *workerFlags) configs(c *common, command []string, log *slog.Logger) ([]worker.Config, error) {
	if err := subjects.ValidateID("--hive-id", f.hiveID); err != nil {
		return nil, usageError{err.Error()}
	}
	if err := subjects.ValidateID("--worker-id", f.workerID); err != nil {
		return nil, usageError{err.Error()}
	}
	if ms := f.interval.Milliseconds(); f.interval%time.Millisecond != 0 || ms < wire.MinIntervalMs || ms > wire.MaxIntervalMs {
		return nil, usagef("--interval %s: want %dms to %dms", f.interval, wire.MinIntervalMs, wire.MaxIntervalMs)
	}
	switch {
	case f.simulate < 0 || f.simulate > 100000:
		return nil, usagef("--simulate %d: want 0 to 100000", f.simulate)
	case f.hang < 0 || f.hang > f.simulate:
		return nil, usagef("--simulate-hang %d: want 0 to --simulate (%d)", f.hang, f.simulate)
	case f.slots < 0:
		return nil, usagef("--slots %d: want 0 or more", f.slots)
	case f.pid < 0:
		return nil, usagef("--pid %d: want a process ID", f.pid)
	case f.stopGrace <= 0:
		return nil, usagef("--stop-grace %s: want more than 0s", f.stopGrace)
	case len(command) > 0 && f.pid != 0:
		return nil, usagef("--pid and a supervised command (after --) exclude each other: the child's pid is used")
	case f.simulate > 0 && (f.engine != "" || len(command) > 0):
		return nil, usagef("--simulate runs simulated workers; it takes no --engine or command")
	}
	eng, err := f.engineConfig(log)
	if err != nil {
		return nil, err
	}
	ids := []string{f.workerID}
	if f.simulate > 0 {
		ids = ids[:0]
		for i := range f.simulate {
			ids = append(ids, f.workerID+"-"+strconv.Itoa(i))
		}
	}
	cfgs := make([]worker.Config, len(ids))
	for i, id := range ids {
		wc := worker.DefaultConfig(f.hiveID, id)
		wc.Prefix, wc.Interval, wc.ModelID, wc.Device, wc.SlotsTotal = c.prefix, f.interval, f.model, f.device, f.slots
		if eng == nil {
			wc.Version = Version // with an engine, the engine's own once read
		}
		wc.URL, wc.PID, wc.Engine = cmp.Or(f.url, f.engineURL), f.pid, eng
		if f.simulate > 0 {
			wc.Device = fmt.Sprintf("cuda:%d", i%8)
		}
		if i == 0 {
			wc.Logger = log
		}
		if err := wc.Validate(); err != nil {
			return nil, usageError{err.Error()}
		}
		cfgs[i] = wc
	}
	return cfgs, nil
}

// exitError carries a supervised engine's exit: the worker exits with the
// engine's code.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// ExitCode returns the engine's exit code, the one rbee worker exits with.
func (e exitError) ExitCode() int { return e.code }

// exitResult turns the engine's exit into rbee worker's result: nil for 0.
func exitResult(x engine.Exit) error {
	if x.Code == 0 {
		return nil
	}
	return exitError{code: x.Code, msg: "engine " + x.String()}
}

func runWorker(e *env, args []string) error {
	var c common
	var f workerFlags
	fs := newFlagSet(e, "worker")
	c.register(fs, DefaultURL)
	f.register(fs)
	flagArgs, command := splitCommand(args)
	if err := c.parse(fs, flagArgs); err != nil {
		return err
	}
	log := c.logger(e)
	cfgs, err := f.configs(&c, command, log)
	if err != nil {
		return err
	}
	if c.token != "" && f.simulate == 0 {
		// A hive's token derives this worker's own: it publishes as itself only.
		if c.token, err = workerToken(c.token, f.hiveID, f.workerID); err != nil {
			return err
		}
		if err := checkTokenFor(c.token, f.hiveID, f.workerID); err != nil {
			return err
		}
	}
	var child *engine.Process
	var sigs chan os.Signal
	if len(command) > 0 {
		// Signals are read here, not only from the context, so that the
		// engine gets the very signal the worker got.
		sigs = make(chan os.Signal, 2)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(sigs)
		child, err = engine.StartProcess(engine.ProcessConfig{Path: command[0], Args: command[1:], Stdout: e.stdout, Stderr: e.stderr})
		if err != nil {
			return err
		}
		cfgs[0].PID = child.PID()
		log.Info("engine started", "pid", child.PID(), "command", strings.Join(redactKeys(command), " "))
	}
	stopChild := func(sig os.Signal) error {
		if child == nil {
			return nil
		}
		log.Info("stopping engine", "pid", child.PID(), "signal", sig, "grace", f.stopGrace)
		return exitResult(child.Stop(sig, f.stopGrace))
	}
	// Waiting for a broker ends early if the engine exits meanwhile.
	connCtx, connCancel := context.WithCancel(e.ctx)
	defer connCancel()
	if child != nil {
		go func() {
			select {
			case <-child.Done():
				connCancel()
			case <-connCtx.Done():
			}
		}()
	}
	nc, err := c.connectWaiting(connCtx, "rbee-worker-"+f.hiveID+"-"+f.workerID, log)
	if err != nil {
		if child != nil && e.ctx.Err() == nil {
			select {
			case <-child.Done():
				log.Warn("engine exited before a NATS server answered", "exit", child.Exit().String())
				return exitResult(child.Exit())
			default:
			}
		}
		return cmp.Or(stopChild(received(sigs)), err)
	}
	defer nc.Close()
	// A supervised engine is stopped by this function, not by the signal
	// context: the workers beat on while it drains, so that its exit
	// reaches the registry before the goodbye.
	wctx := e.ctx
	if child != nil {
		wctx = context.WithoutCancel(e.ctx)
	}
	workers := make([]*worker.Worker, len(cfgs))
	for i, wc := range cfgs {
		w, err := worker.New(nc, wc)
		if err != nil {
			return cmp.Or(stopChild(syscall.SIGTERM), error(usageError{err.Error()}))
		}
		if err := w.Start(wctx); err != nil {
			return cmp.Or(stopChild(syscall.SIGTERM), err)
		}
		if wc.Engine == nil {
			_ = w.SetStatus(wire.StatusReady, wire.Healthy, "")
		}
		workers[i] = w
	}
	sent := make([]func() uint64, len(workers))
	for i, w := range workers {
		sent[i] = func() uint64 { return w.Stats().Sent }
	}
	if err := checkAllowed(e.ctx, nc, c.scheme().Worker(f.hiveID, cfgs[0].WorkerID), sent...); err != nil {
		for _, w := range workers {
			w.Abandon()
		}
		return cmp.Or(stopChild(syscall.SIGTERM), err)
	}
	log.Info("workers beating", "hive", f.hiveID, "count", len(workers), "interval", f.interval)
	c.watchQueens(e.ctx, nc, f.interval, log)
	if f.simulate > 0 {
		go simulateLoad(e.ctx, workers, f.interval, f.hang)
	}
	if child == nil {
		<-e.ctx.Done()
		return goodbye(log, workers)
	}
	w := workers[0]
	select {
	case <-child.Done():
		x := child.Exit()
		log.Warn("engine exited", "pid", child.PID(), "exit", x.String())
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := w.Exited(ctx, "engine "+x.String()); err != nil {
			log.Warn("last beat not sent", "err", err)
		}
		cancel()
		_ = goodbye(log, workers)
		return exitResult(x)
	case sig := <-sigs:
		return stopBoth(log, w, workers, stopChild(sig))
	case <-e.ctx.Done():
		return stopBoth(log, w, workers, stopChild(received(sigs)))
	}
}

// redactKeys returns command with the value of every API-key flag
// (--api-key X, --api-key=X) replaced, for logging.
func redactKeys(command []string) []string {
	out := make([]string, len(command))
	for i, a := range command {
		out[i] = a
		if i > 0 && strings.HasSuffix(command[i-1], "api-key") && strings.HasPrefix(command[i-1], "-") {
			out[i] = "[redacted]"
		}
		if k, _, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "-") && strings.HasSuffix(k, "api-key") {
			out[i] = k + "=[redacted]"
		}
	}
	return out
}

// received returns the signal that stopped the worker, SIGTERM when only
// its context ended.
func received(sigs chan os.Signal) os.Signal {
	select {
	case s := <-sigs:
		return s
	default:
		return syscall.SIGTERM
	}
}

// stopBoth says goodbye once the engine has exited, and returns the
// engine's result. An engine that exited non-zero makes the goodbye say
// unhealthy, with the exit as the reason.
func stopBoth(log *slog.Logger, w *worker.Worker, workers []*worker.Worker, engineResult error) error {
	if engineResult != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := w.Exited(ctx, engineResult.Error()); err != nil {
			log.Warn("last beat not sent", "err", err)
		}
		cancel()
	}
	_ = goodbye(log, workers)
	return engineResult
}

// goodbye stops every worker gracefully and logs the goodbyes.
func goodbye(log *slog.Logger, workers []*worker.Worker) error {
	var wg sync.WaitGroup
	errs := make([]error, len(workers))
	for i, w := range workers {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = stopGracefully(w.Stop) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		log.Warn("goodbye not sent", "err", err)
		return nil
	}
	log.Info("goodbye sent", "workers", len(workers))
	return nil
}

// checkAllowed waits until every sender counted by sent has sent its first
// beat and for a round trip to the server, then fails if the server refused
// a publish or a subscription: credentials that do not allow the agent's own
// subject are fatal at start, not one error per beat forever.
func checkAllowed(ctx context.Context, nc *nats.Conn, subject string, sent ...func() uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for _, n := range sent {
		for n() < 1 {
			select {
			case <-ctx.Done():
				return nil // not connected yet: the beats go out when it is
			case <-t.C:
			}
		}
	}
	if err := natsconn.Flush(ctx, nc); err != nil {
		return nil
	}
	if err := nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) {
		return fmt.Errorf("not allowed to publish heartbeats on %s: %v", subject, err)
	}
	return nil
}

// simulateLoad flips a few random workers between ready and busy every
// interval, and grows the progress of the busy ones. The first hang workers
// go busy at once and their progress never grows again: the queen's stall
// detection marks them stalled.
func simulateLoad(ctx context.Context, workers []*worker.Worker, interval time.Duration, hang int) {
	busy := make([]bool, len(workers))
	for i, w := range workers {
		w.AddProgress(0)
		if i < hang {
			_ = w.SetStatus(wire.StatusBusy, wire.Healthy, "")
			w.SetSlotsBusy(1)
			busy[i] = true
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if len(workers) > hang {
				for range max(1, len(workers)/10) {
					i := hang + rand.IntN(len(workers)-hang)
					busy[i] = rand.IntN(2) == 0
					st, slots := wire.StatusReady, 0
					if busy[i] {
						st, slots = wire.StatusBusy, 1
					}
					_ = workers[i].SetStatus(st, wire.Healthy, "")
					workers[i].SetSlotsBusy(slots)
				}
			}
			for i := hang; i < len(workers); i++ {
				if busy[i] {
					workers[i].AddProgress(uint64(20 + rand.IntN(40)))
				}
			}
		}
	}
}
