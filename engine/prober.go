package engine

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/wire"
)

// Config configures a Prober.
type Config struct {
	// Spec names the engine's endpoints and metrics; see Preset.
	Spec Spec
	// URL is the engine's base URL, e.g. http://127.0.0.1:8000.
	URL string
	// Interval is the time between probes; use the heartbeat interval.
	Interval time.Duration
	// Timeout bounds one probe (health, metrics and info together); at most
	// Interval. A probe past it fails, and the last good metrics go out stale.
	Timeout time.Duration
	// OnState is called after every probe with the new state, from the
	// prober's goroutine, one call at a time; it must return promptly.
	OnState func(State)
	// APIKey, when set, goes with every request as "Authorization: Bearer
	// <key>" (llama-server and vLLM started with --api-key answer 401
	// without it). It is never logged.
	APIKey string
	// InfoRetry is how long the prober waits before asking the info
	// endpoint again after it failed; the model and version are all it
	// feeds, so a failure costs nothing else.
	InfoRetry time.Duration
	// Client makes the requests; nil uses a client of its own.
	Client *http.Client
	// Logger receives probe failures (on change only); nil discards.
	Logger *slog.Logger
}

// DefaultInfoRetry is the default Config.InfoRetry: an info endpoint that
// failed (a proxy that forwards only /health and /metrics) is asked again
// every ten minutes, not every probe.
const DefaultInfoRetry = 10 * time.Minute

// DefaultConfig returns a Config for spec at url: a probe every 30 s (the
// heartbeat's default interval), each given 5 s.
func DefaultConfig(spec Spec, url string) Config {
	return Config{Spec: spec, URL: url, Interval: 30 * time.Second, Timeout: 5 * time.Second, InfoRetry: DefaultInfoRetry}
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c Config) Validate() error {
	if err := c.Spec.Validate(); err != nil {
		return err
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: engine url %q: want http://host:port", ErrInvalidConfig, c.URL)
	}
	switch {
	case c.Interval <= 0:
		return fmt.Errorf("%w: probe interval must be positive, got %s", ErrInvalidConfig, c.Interval)
	case c.Timeout <= 0 || c.Timeout > c.Interval:
		return fmt.Errorf("%w: probe timeout %s: want more than 0s and at most the probe interval %s", ErrInvalidConfig, c.Timeout, c.Interval)
	case c.InfoRetry < 0:
		return fmt.Errorf("%w: info retry %s is negative", ErrInvalidConfig, c.InfoRetry)
	case strings.ContainsAny(c.APIKey, "\r\n"):
		return fmt.Errorf("%w: the engine API key holds a line break", ErrInvalidConfig)
	}
	return nil
}

// State is the engine as the latest probes saw it.
type State struct {
	// Status is starting (loading, or not answering yet within StartGrace),
	// ready, busy (requests running), draining (the engine sleeps: it
	// answers but serves nothing until woken), or stopped (probes failing
	// past the grace). A failed probe never turns a busy engine ready: the
	// last reading stands, marked stale.
	Status wire.Status
	// Health is healthy when the engine answers, degraded when it answers
	// but its metrics cannot be read, unhealthy when its health endpoint
	// fails; Reason says why it is not healthy. The info endpoint's failure
	// changes neither.
	Health wire.Health
	Reason string
	// Metrics are from the last good /metrics read, taken at MetricsAt
	// (zero: none yet).
	Metrics   Metrics
	MetricsAt time.Time
	// Model is the name the engine serves (its alias or served name where
	// it reports one, else its model path); Version is the engine's own.
	// Both are empty until read.
	Model, Version string
	// Stale is true when Metrics are not from the latest probe: it failed,
	// or one has run past its timeout, or none came for an interval.
	Stale bool
	// Restarted is true when this probe's progress counter was below the
	// previous one: the engine restarted, and its counters began again.
	Restarted bool
	// Probes counts finished probes.
	Probes uint64
}

// Prober probes one engine every Interval in its own goroutine and keeps the
// latest State. Its methods may be called concurrently.
type Prober struct {
	cfg    Config
	base   string
	client *http.Client
	log    *slog.Logger
	now    func() time.Time

	mu         sync.Mutex
	state      State
	started    time.Time // when Start ran
	everUp     bool
	lastUp     time.Time // last answer (good or loading)
	needInfo   bool
	infoNext   time.Time // no info request before this, after a failure
	infoFailed bool      // the info failure is logged; cleared by a good read
	perReqSaid bool      // the per-request progress warning is logged
	lastLogged string    // status and health last logged, to log changes only
	inFlight   bool
	since      time.Time // the running probe's start

	life    sync.Mutex
	running bool
	stopped bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// NewProber returns a Prober for cfg. It returns an error wrapping
// ErrInvalidConfig for a bad Config.
func NewProber(cfg Config) (*Prober, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := cfg.Client
	if c == nil {
		c = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2, IdleConnTimeout: 2 * cfg.Interval}}
	}
	return &Prober{
		cfg: cfg, base: strings.TrimRight(cfg.URL, "/"), client: c, now: time.Now, needInfo: true,
		log:   log.With("component", "engine", "engine", string(cfg.Spec.Kind), "url", cfg.URL),
		state: State{Status: wire.StatusStarting, Health: wire.Healthy, Stale: true},
	}, nil
}

// Start probes at once and then every Interval until ctx ends or Stop. A
// second Start, or Start after Stop, returns an error wrapping
// lifecycle.ErrStarted.
func (p *Prober) Start(ctx context.Context) error {
	p.life.Lock()
	defer p.life.Unlock()
	if p.running || p.stopped {
		return fmt.Errorf("engine prober: %w", lifecycle.ErrStarted)
	}
	p.running = true
	p.mu.Lock()
	p.started = p.now()
	p.mu.Unlock()
	ctx, p.cancel = context.WithCancel(ctx)
	p.wg.Add(1)
	go p.run(ctx)
	return nil
}

// Stop ends probing and waits for the probe in flight, which its cancelled
// context ends. It is safe before Start and more than once.
func (p *Prober) Stop() {
	p.life.Lock()
	p.stopped = true
	cancel := p.cancel
	p.life.Unlock()
	if cancel != nil {
		cancel()
	}
	p.wg.Wait()
}

// Latest returns the current State without waiting for a probe. Its Stale
// is also true while a probe runs past its timeout, or when the last good
// metrics are older than Interval plus Timeout.
func (p *Prober) Latest() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.state
	now := p.now()
	if (p.inFlight && now.Sub(p.since) > p.cfg.Timeout) || s.MetricsAt.IsZero() || now.Sub(s.MetricsAt) > p.cfg.Interval+p.cfg.Timeout {
		s.Stale = true
	}
	s.Restarted = false
	return s
}

// Kind returns the engine kind probed.
func (p *Prober) Kind() Kind { return p.cfg.Spec.Kind }

func (p *Prober) run(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	p.probeOnce(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.probeOnce(ctx)
		}
	}
}

// probeOnce runs one probe under Timeout and publishes the new state. The
// loop waits for it: with the request bounded by its context, a probe past
// its timeout fails rather than piling up behind a hung engine.
func (p *Prober) probeOnce(ctx context.Context) {
	p.mu.Lock()
	p.inFlight, p.since = true, p.now()
	info := p.needInfo && !p.since.Before(p.infoNext)
	p.mu.Unlock()

	pctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	a := probe(pctx, p.client, p.base, p.cfg.Spec, p.cfg.APIKey, info)
	cancel()
	if ctx.Err() != nil {
		p.mu.Lock()
		p.inFlight = false
		p.mu.Unlock()
		return // stopped: nobody wants this answer
	}
	s := p.record(a, info)
	if p.cfg.OnState != nil {
		p.cfg.OnState(s)
	}
}

// record folds one answer into the state and returns it. Each endpoint
// feeds its own part: health the health and status, /metrics the load
// figures, info the model and version.
func (p *Prober) record(a Answer, info bool) State {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.inFlight = false
	s := p.state
	s.Probes++
	s.Restarted = false
	if a.MetricsRead {
		m := a.Metrics
		if m.Progress != nil && s.Metrics.Progress != nil && *m.Progress < *s.Metrics.Progress {
			s.Restarted = true
			p.needInfo, p.infoNext = true, time.Time{}
		}
		if m.PerRequest && !p.perReqSaid {
			p.perReqSaid = true
			p.log.Warn("engine progress grows only when a request finishes; a long generation looks stalled unless the queen's --stall-after exceeds the longest request",
				"counter", p.cfg.Spec.ProgressPerRequest, "per_step_counter_absent", p.cfg.Spec.Progress)
		}
		s.Metrics, s.MetricsAt, s.Stale = m, now, false
		if m.Model != "" && p.cfg.Spec.InfoModelKeys == nil {
			s.Model = m.Model
		}
	}
	switch {
	case a.InfoRead:
		p.needInfo, p.infoFailed = false, false
		s.Model = cmp.Or(a.Info.Model, s.Model, s.Metrics.Model)
		s.Version = cmp.Or(a.Info.Version, s.Version)
	case a.InfoErr != nil && !timedOut(a.InfoErr):
		p.infoNext = now.Add(p.cfg.InfoRetry)
		if !p.infoFailed {
			p.infoFailed = true
			p.log.Warn("engine info unavailable; model and version not read from the engine, asking again later",
				"err", a.InfoErr, "retry_in", p.cfg.InfoRetry)
		}
	}
	if s.Model == "" {
		s.Model = s.Metrics.Model
	}
	switch {
	case a.Err != nil:
		s.Health, s.Reason = wire.Unhealthy, a.Err.Error()
		if !a.MetricsRead {
			s.Stale = true
		}
		p.needInfo = true
		switch {
		case p.everUp && now.Sub(p.lastUp) > p.cfg.Spec.Grace:
			s.Status = wire.StatusStopped
			s.Reason = fmt.Sprintf("%s (failing for %s, past the %s grace)", a.Err, now.Sub(p.lastUp).Round(time.Second), p.cfg.Spec.Grace)
		case !p.everUp && now.Sub(p.started) > p.cfg.Spec.StartGrace:
			s.Status = wire.StatusStopped
			s.Reason = fmt.Sprintf("%s (never answered within the %s start grace)", a.Err, p.cfg.Spec.StartGrace)
		case !p.everUp:
			s.Status = wire.StatusStarting
		case a.MetricsRead && s.Status == wire.StatusReady && running(s.Metrics):
			s.Status = wire.StatusBusy // never the other way while health fails
		}
	case a.Loading:
		p.lastUp = now
		s.Status, s.Health, s.Reason, s.Stale = wire.StatusStarting, wire.Healthy, "", true
	default:
		p.everUp, p.lastUp = true, now
		s.Health, s.Reason = wire.Healthy, ""
		if a.MetricsErr != nil {
			s.Health, s.Reason, s.Stale = wire.Degraded, a.MetricsErr.Error(), true
		}
		switch {
		case s.Metrics.Sleeping:
			s.Status = wire.StatusDraining
		case running(s.Metrics):
			s.Status = wire.StatusBusy
		default:
			s.Status = wire.StatusReady
		}
	}
	if key := string(s.Status) + "/" + string(s.Health); key != p.lastLogged {
		switch {
		case s.Health != wire.Healthy:
			p.log.Warn("engine probe failing", "status", s.Status, "health", s.Health, "reason", s.Reason)
		case s.Metrics.Sleeping:
			p.log.Info("engine sleeping", "status", s.Status)
		default:
			p.log.Info("engine probe answering", "status", s.Status)
		}
		p.lastLogged = key
	}
	p.state = s
	return s
}

func running(m Metrics) bool { return m.Running != nil && *m.Running > 0 }
