package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rbee/heartbeat/fleet"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/web"
	"github.com/rbee/heartbeat/wire"
)

// The queen's HTTP API:
//
//	GET /                          the live web view (package web)
//	GET /v1/events                 its server-sent event stream; ?event= &exclude= select registry event types
//	GET /v1/workers                worker entries; filters ?hive= &model= &status= &liveness=
//	GET /v1/workers/<hive>.<worker> one worker entry, 404 if absent
//	GET /v1/hives                  hive entries; filters ?hive= &health= &liveness=
//	GET /v1/hives/<hive>           one hive entry, 404 if absent
//	GET /healthz                   200 {"status":"ok"}, or 503 with the reason
//	GET /metrics                   Prometheus text format
//
// A filter may be repeated (?status=ready&status=busy: either); liveness
// alive also matches entries without the key. Errors are {"error": "..."}.

// registrySource is what the API reads: the queen's registry mirror. Its
// methods may be called concurrently.
type registrySource interface {
	Workers() []*wire.WorkerEntry
	Hives() []*wire.HiveEntry
	Worker(key string) (*wire.WorkerEntry, uint64, bool)
	Hive(key string) (*wire.HiveEntry, uint64, bool)
}

// healthReporter judges the queen's own health: nil when it is ok, else the
// reason (overloaded, store failing, registry disrupted, stopped).
type healthReporter interface {
	Health() error
}

var (
	_ registrySource = (*registry.Watcher)(nil)
	_ healthReporter = (*queen.Queen)(nil)
)

// healthTimeout bounds the JetStream call behind /healthz.
const healthTimeout = 2 * time.Second

// httpAPI holds what the handlers need.
type httpAPI struct {
	q    *queen.Queen
	self healthReporter      // the queen
	nc   *nats.Conn          // nil: no broker check
	js   jetstream.JetStream // nil with nc
	view *web.View           // nil: the page runs without live updates
}

// source returns the queen's registry, or nil before the queen started.
func (a *httpAPI) source() registrySource {
	if w := a.q.Registry(); w != nil {
		return w
	}
	return nil
}

// fleet returns the collector of the fleet's gauges, computed at scrape time
// from the queen's registry mirror.
func (a *httpAPI) fleet() prometheus.Collector {
	c, err := fleet.New(func() fleet.Source {
		if w := a.q.Registry(); w != nil {
			return fleetSource{w}
		}
		return nil
	}, fleet.DefaultConfig(Version))
	if err != nil {
		panic(err) // DefaultConfig is valid
	}
	return c
}

// fleetSource gives the fleet collector the mirror's workers in no order:
// it aggregates them, and the sort of Workers took 0.4 s per scrape at a
// million workers.
type fleetSource struct{ *registry.Watcher }

func (s fleetSource) Workers() []*wire.WorkerEntry { return s.WorkersAnyOrder() }

// newHTTPHandler serves the API for q without a broker connection: no live
// web view and no broker check in /healthz.
func newHTTPHandler(q *queen.Queen) http.Handler {
	return (&httpAPI{q: q, self: q}).handler()
}

func (a *httpAPI) handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(a.q.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(a.fleet())
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", a.serveHealth)
	mux.HandleFunc("GET /v1/workers", a.serveWorkers)
	mux.HandleFunc("GET /v1/workers/{key}", a.serveWorker)
	mux.HandleFunc("GET /v1/hives", a.serveHives)
	mux.HandleFunc("GET /v1/hives/{id}", a.serveHive)
	if a.view != nil {
		mux.Handle("GET /v1/events", a.view.Events())
	} else {
		mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusServiceUnavailable, "live updates need the queen's broker connection")
		})
	}
	mux.HandleFunc("GET /v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	mux.Handle("GET /", web.Static())
	return jsonErrors(mux)
}

// health returns nil when the queen can serve, else the reason.
func (a *httpAPI) health(ctx context.Context) error {
	if a.q.Registry() == nil {
		return errors.New("registry not loaded")
	}
	if a.nc != nil {
		if st := a.nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("nats connection %s", strings.ToLower(st.String()))
		}
		if err := jetStreamHealth(ctx, a.js); err != nil {
			return err
		}
	}
	return a.self.Health()
}

// jetStreamHealth asks the server for the account's JetStream information,
// within healthTimeout.
func jetStreamHealth(ctx context.Context, js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("jetstream unavailable: %v", err)
	}
	return nil
}

func (a *httpAPI) serveHealth(w http.ResponseWriter, r *http.Request) {
	if err := a.health(r.Context()); err != nil {
		// One line, so that a probe's log shows the whole reason.
		reason := strings.Join(strings.Fields(err.Error()), " ")
		writeLine(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": reason})
		return
	}
	writeLine(w, http.StatusOK, map[string]string{"status": "ok"})
}

// filter is a parsed set of query filters: each key holds the values any of
// which an entry may match.
type filter map[string][]string

// parseFilter returns the query's filters, or an error naming an unknown
// parameter or value.
func parseFilter(q url.Values, allowed ...string) (filter, error) {
	f := filter{}
	for k, vs := range q {
		if !slices.Contains(allowed, k) {
			return nil, fmt.Errorf("unknown filter %q (want %s)", k, strings.Join(allowed, ", "))
		}
		for _, v := range vs {
			if err := checkFilterValue(k, v); err != nil {
				return nil, err
			}
		}
		f[k] = vs
	}
	return f, nil
}

func checkFilterValue(k, v string) error {
	switch k {
	case "hive":
		if !subjects.ValidID(v) {
			return fmt.Errorf("hive %q: not a hive id ([A-Za-z0-9_-]{1,64})", v)
		}
	case "status":
		if !wire.Status(v).Valid() {
			return fmt.Errorf("status %q: want starting, ready, busy, draining, stopping or stopped", v)
		}
	case "health":
		if !wire.Health(v).Valid() {
			return fmt.Errorf("health %q: want healthy, degraded or unhealthy", v)
		}
	case "liveness":
		switch wire.Liveness(v) {
		case wire.LivenessAlive, wire.LivenessDisconnected, wire.LivenessStalled:
		default:
			return fmt.Errorf("liveness %q: want alive, disconnected or stalled", v)
		}
	}
	return nil
}

// match reports whether value passes the filter on key.
func (f filter) match(key, value string) bool {
	vs, ok := f[key]
	return !ok || slices.Contains(vs, value)
}

func (a *httpAPI) serveWorkers(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r.URL.Query(), "hive", "model", "status", "liveness")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	src := a.source()
	if src == nil {
		writeError(w, http.StatusServiceUnavailable, "registry not loaded")
		return
	}
	out := []*wire.WorkerEntry{}
	for _, e := range src.Workers() {
		if f.match("hive", e.HiveID) && f.match("model", e.ModelID) && f.match("status", string(e.Status)) &&
			f.match("liveness", string(e.Liveness.OrAlive())) {
			out = append(out, e)
		}
	}
	writeJSON(w, out)
}

func (a *httpAPI) serveWorker(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	hive, id, err := subjects.ParseWorkerKey(key)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not <hive_id>.<worker_id>", key))
		return
	}
	src := a.source()
	if src == nil {
		writeError(w, http.StatusServiceUnavailable, "registry not loaded")
		return
	}
	if e, _, ok := src.Worker(subjects.WorkerKey(hive, id)); ok {
		writeJSON(w, e)
		return
	}
	writeError(w, http.StatusNotFound, "worker "+key+" not in the registry")
}

func (a *httpAPI) serveHives(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r.URL.Query(), "hive", "health", "liveness")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	src := a.source()
	if src == nil {
		writeError(w, http.StatusServiceUnavailable, "registry not loaded")
		return
	}
	out := []*wire.HiveEntry{}
	for _, e := range src.Hives() {
		if f.match("hive", e.HiveID) && f.match("health", string(e.Health)) && f.match("liveness", string(e.Liveness.OrAlive())) {
			out = append(out, e)
		}
	}
	writeJSON(w, out)
}

func (a *httpAPI) serveHive(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !subjects.ValidID(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a hive id", id))
		return
	}
	src := a.source()
	if src == nil {
		writeError(w, http.StatusServiceUnavailable, "registry not loaded")
		return
	}
	if e, _, ok := src.Hive(subjects.HiveKey(id)); ok {
		writeJSON(w, e)
		return
	}
	writeError(w, http.StatusNotFound, "hive "+id+" not in the registry")
}

// writeError answers {"error": msg} on one line.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeLine(w, status, map[string]string{"error": msg})
}

// writeJSON answers 200 with v, indented for reading.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// writeLine answers status with v as one line of JSON.
func writeLine(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// httpServer is the queen's HTTP server and the web view behind it.
type httpServer struct {
	hs   *http.Server
	view *web.View
	addr string
}

// Addr returns the address the server listens on.
func (s *httpServer) Addr() string { return s.addr }

// Close disconnects the web view's pages, stops its registry watch and
// closes the server.
func (s *httpServer) Close() error {
	if s.view != nil {
		s.view.Stop()
	}
	return s.hs.Close()
}

// startHTTP serves q's API and web view on addr. nc is the queen's
// connection: the web view watches the registry on it and /healthz checks
// it; with nil the page loads without live updates and /healthz checks only
// the queen. With shared (the queen's OnEvent, refreshes included), the view
// shares the queen's registry watch instead of watching on its own.
//
// sec, if given, guards the API with bearer tokens and TLS (http_auth.go).
func startHTTP(ctx context.Context, addr string, q *queen.Queen, nc *nats.Conn, log *slog.Logger, shared *eventFanout, sec ...httpSecurity) (*httpServer, error) {
	var guard httpSecurity
	if len(sec) > 0 {
		guard = sec[0]
	}
	a := &httpAPI{q: q, self: q, nc: nc}
	if nc != nil {
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, fmt.Errorf("jetstream: %w", err)
		}
		a.js = js
		vc := web.DefaultConfig(js)
		vc.Scheme, vc.Logger = q.Scheme(), log
		if shared != nil {
			vc.Watcher = q.Registry()
		}
		if a.view, err = web.New(vc); err != nil {
			return nil, err
		}
		if shared != nil {
			shared.add(a.view.OnEvent)
		}
		if err := a.view.Start(ctx); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if a.view != nil {
			a.view.Stop()
		}
		return nil, err
	}
	hs := &http.Server{Handler: guard.wrap(a.handler()), ReadHeaderTimeout: 5 * time.Second}
	if a.view != nil {
		// Shutdown waits for open streams; end them first.
		hs.RegisterOnShutdown(a.view.Stop)
	}
	go func() {
		var err error
		if guard.certFile != "" {
			err = hs.ServeTLS(ln, guard.certFile, guard.keyFile)
		} else {
			err = hs.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	s := &httpServer{hs: hs, view: a.view, addr: ln.Addr().String()}
	scheme := "http://"
	if guard.certFile != "" {
		scheme = "https://"
	}
	log.Info("http api ready", "addr", scheme+s.addr, "bearer_tokens", guard.check != nil)
	return s, nil
}

// eventFanout hands each registry event to every function added, in order;
// it is a queen's OnEvent. Functions may be added while events flow.
type eventFanout struct {
	mu sync.RWMutex
	fs []func(registry.Event)
}

func (f *eventFanout) add(fn func(registry.Event)) {
	f.mu.Lock()
	f.fs = append(f.fs, fn)
	f.mu.Unlock()
}

func (f *eventFanout) call(ev registry.Event) {
	f.mu.RLock()
	fs := f.fs
	f.mu.RUnlock()
	for _, fn := range fs {
		fn(ev)
	}
}
