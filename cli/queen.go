package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/subjects"
	"github.com/shirou/gopsutil/v4/mem"
)

type queenFlags struct {
	common
	listen      string
	data        string
	missed      int
	maxTTL      time.Duration
	stallAfter  int
	queenID     string
	disruption  float64
	replicas    int
	http        string
	cluster     string
	clusterName string
	routes      string
	serverName  string
	config      string
	evMaxAge    time.Duration
	evMaxBytes  string
	authCallout bool
	httpTLS     string
	pprof       string
	peerLinger  time.Duration
}

func runQueen(e *env, args []string) error {
	var f queenFlags
	fs := newFlagSet(e, "queen")
	f.register(fs, "")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:4222", "embedded broker's client address (loopback by default)")
	fs.StringVar(&f.data, "data", "rbee-data", "embedded broker's JetStream directory")
	fs.IntVar(&f.missed, "missed", 3, "an entry expires after this many of its own intervals without a beat (2-100)")
	fs.DurationVar(&f.maxTTL, "max-ttl", time.Hour, "the longest TTL any entry may have; a beat whose TTL would pass it is refused")
	fs.IntVar(&f.stallAfter, "stall-after", 3, "a busy worker whose progress stands still this many of its intervals is stalled")
	fs.StringVar(&f.queenID, "queen-id", "", "this queen's ID in its own heartbeat and in the queens bucket (default: the host name and a hash of --data, the same at every start)")
	fs.Float64Var(&f.disruption, "disruption-share", 0.3, "share of entries expiring within one TTL that makes the registry disrupted")
	fs.IntVar(&f.replicas, "replicas", 1, "bucket replicas (3 in a cluster of three)")
	fs.StringVar(&f.http, "http", "127.0.0.1:8500", "HTTP API and /metrics address, or off")
	fs.StringVar(&f.cluster, "cluster", "", "embedded broker's cluster address host:port (joins a NATS cluster)")
	fs.StringVar(&f.clusterName, "cluster-name", "rbee", "cluster name, the same on every member")
	fs.StringVar(&f.routes, "routes", "", "comma-separated cluster URLs of the other members, e.g. nats-route://127.0.0.1:6223")
	fs.StringVar(&f.serverName, "server-name", "", "embedded broker's name (distinct per cluster member; default from the host and port)")
	fs.StringVar(&f.config, "config", "", "nats-server configuration file for the embedded broker (authorization, TLS)")
	fs.DurationVar(&f.evMaxAge, "events-max-age", 7*24*time.Hour, "how long the event history (stream rbee_events) keeps an event")
	fs.StringVar(&f.evMaxBytes, "events-max-bytes", "1GiB", "the most the event history may store, e.g. 512MiB or 1GiB")
	fs.BoolVar(&f.authCallout, "auth-callout", false, "serve the broker's auth callout (docs/security.md); on by itself for an embedded broker beyond loopback")
	fs.StringVar(&f.httpTLS, "http-tls", "", "serve the HTTP API over TLS: CERT,KEY (PEM files)")
	fs.DurationVar(&f.peerLinger, "peer-linger", 8*time.Minute, "how long another queen whose entry expired without a goodbye still counts as one (the broker may still hand it beats until it drops it: 6-8 min with nats-server's default pings); 0: not at all")
	fs.StringVar(&f.pprof, "pprof", "off", "serve Go's runtime profiles (net/http/pprof, /debug/pprof/) on this host:port, or off; keep it on loopback")
	if err := f.parse(fs, args); err != nil {
		return err
	}
	f.token = "" // a queen connects as the queens' user, never with an agent's token
	log := f.logger(e)
	if f.urlFromEnv {
		// First, before anything waits on it: an exported NATS_URL is easy
		// to forget, and with it the queen starts no broker of its own.
		log.Info("using the NATS server named by NATS_URL from the environment, no embedded broker (unset it, or give --nats-url \"\", for the embedded broker)", "NATS_URL", redactURL(f.natsURL))
	}
	queenGC()
	sc := events.DefaultStreamConfig()
	sc.MaxAge, sc.Replicas = f.evMaxAge, f.replicas
	var err error
	if sc.MaxBytes, err = events.ParseSize(f.evMaxBytes); err != nil {
		return usagef("--events-max-bytes %q: %v", f.evMaxBytes, err)
	}
	if err := sc.Validate(); err != nil {
		return usageError{err.Error()}
	}
	qc := queen.DefaultConfig()
	qc.Prefix, qc.Missed, qc.MaxTTL, qc.StallAfter, qc.Replicas, qc.Logger = f.prefix, f.missed, f.maxTTL, f.stallAfter, f.replicas, log
	qc.DisruptionShare, qc.Version, qc.PeerLinger = f.disruption, Version, f.peerLinger
	if f.queenID != "" {
		qc.QueenID = f.queenID
	} else if dir, err := filepath.Abs(f.data); err == nil {
		qc.QueenID = queen.StableQueenID(dir)
	}
	if err := qc.Validate(); err != nil {
		return usageError{err.Error()}
	}
	if f.http != "off" {
		if _, _, err := net.SplitHostPort(f.http); err != nil {
			return usagef("--http %q: want host:port or off", f.http)
		}
	}
	if f.pprof != "off" {
		if _, _, err := net.SplitHostPort(f.pprof); err != nil {
			return usagef("--pprof %q: want host:port or off", f.pprof)
		}
	}

	var guard httpSecurity
	if guard.certFile, guard.keyFile, err = parseTLSPair(f.httpTLS); err != nil {
		return err
	}
	var srv *embedded.Server
	var qa *queenAuth
	if f.natsURL == "" {
		var ec embedded.Config
		if ec, qa, err = f.secureEmbeddedConfig(e, log); err != nil {
			return err
		}
		if srv, err = embedded.New(ec); err != nil {
			if errors.Is(err, embedded.ErrInvalidConfig) {
				return usageError{err.Error()}
			}
			return listenHint(err, "--listen", f.listen)
		}
		defer srv.Shutdown()
		f.natsURL = srv.ClientURL()
		log.Info("embedded broker ready", "url", f.natsURL, "data", ec.StoreDir)
		qc.Collectors = append(qc.Collectors, brokerRefusals(srv), brokerAuthFailures(srv))
		qc.StoreFailed = srv.StoreFailed
		qc.Repair = func(context.Context) error {
			again, err := srv.RecoverJetStream()
			if again {
				log.Warn("embedded JetStream recovered after a storage failure")
			}
			return err
		}
	} else if f.cluster != "" || f.routes != "" || f.config != "" {
		return usagef("--cluster, --routes and --config configure the embedded broker; they do not go with --nats-url")
	} else if qa, err = f.prepareAuth(e, nil, log); err != nil {
		return err
	}

	nc, err := f.connectWaiting(e.ctx, "rbee-queen", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if qa != nil {
		svc, err := qa.start(e.ctx, &f, nc, srv, log)
		if err != nil {
			if e.ctx.Err() != nil {
				return errStoppedWaiting
			}
			return err
		}
		defer qa.stop(svc)
		qc.Collectors = append(qc.Collectors, svc.Collector())
		if qa.http {
			guard.check = svc.Check
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// Every registry event also goes to the event history; the publisher
	// never blocks the queen (what it must shed is counted and logged).
	pc := events.DefaultConfig(qc.QueenID)
	pc.Scheme, pc.Logger = f.scheme(), log
	evp, err := events.NewPublisher(js, pc)
	if err != nil {
		return usageError{err.Error()}
	}
	if err := evp.Start(e.ctx); err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		evp.Stop(ctx)
	}()
	// The event history and the web view share the queen's registry watch.
	fan := &eventFanout{}
	fan.add(evp.OnEvent)
	live := &events.Live{} // keys that changed since the registry loaded: the live history has them
	fan.add(live.OnEvent)
	qc.OnEvent, qc.Refreshes = fan.call, true
	qc.Collectors = append(qc.Collectors, evp.Collector())
	q, err := queen.New(nc, qc)
	if err != nil {
		return usageError{err.Error()}
	}
	if err := q.Start(e.ctx); err != nil {
		return err
	}
	// The event history is kept beside the registry, never in its way: a
	// stream that cannot be made yet (a cluster still placing its replicas)
	// is retried while the queen runs, and events published meanwhile are
	// counted as failed.
	go func() {
		warned := false
		for {
			ctx, cancel := context.WithTimeout(e.ctx, 15*time.Second)
			_, err := events.EnsureStream(ctx, js, f.scheme(), sc)
			cancel()
			if err == nil {
				if warned {
					log.Info("event history ready", "stream", f.scheme().EventsStream())
				}
				reconcileHistory(e.ctx, js, f.scheme(), q, live, log)
				return
			}
			if e.ctx.Err() != nil {
				return
			}
			if !warned {
				log.Warn("event history not ready, retrying", "stream", f.scheme().EventsStream(), "err", err)
				warned = true
			}
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
		}
	}()
	if qc.Advisories {
		go func() {
			// A server without the advisory import leaves crash detection to the TTL: say so once.
			ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
			defer cancel()
			acc, err := embedded.ClientAccount(ctx, nc)
			if err == nil {
				err = embedded.AdvisoriesReachable(ctx, nc, acc, func() (*nats.Conn, error) {
					return natsconn.Connect(f.connConfig("rbee-queen-probe", log))
				})
			}
			if err != nil && e.ctx.Err() == nil {
				log.Warn("no connection advisories from the server: crash detection falls back to the TTL", "err", err)
			}
		}()
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q.Stop(ctx)
	}()
	if f.http != "off" {
		hs, err := startHTTP(e.ctx, f.http, q, nc, log, fan, guard)
		if err != nil {
			return listenHint(err, "--http", f.http)
		}
		defer hs.Close()
	}
	if f.pprof != "off" {
		ps, err := startPprof(f.pprof, log)
		if err != nil {
			return listenHint(err, "--pprof", f.pprof)
		}
		defer ps.Close()
	}
	<-e.ctx.Done()
	log.Info("stopping")
	return nil
}

// reconcileHistory publishes, once the registry is loaded, an expired event
// for every worker and hive the history shows present and the registry no
// longer holds: they died while no queen kept the history.
func reconcileHistory(ctx context.Context, js jetstream.JetStream, s subjects.Scheme, q *queen.Queen, live *events.Live, log *slog.Logger) {
	defer live.Stop()
	w := q.Registry()
	if w == nil || w.WaitReady(ctx) != nil {
		return
	}
	roster := events.TakeRoster(w)
	n, err := events.Reconcile(ctx, js, s, q.ID(), func(k subjects.Kind, key string) bool {
		return roster.Has(k, key) || live.Has(k, key)
	})
	switch {
	case err != nil && ctx.Err() == nil:
		log.Warn("event history: deaths while no queen watched not recorded", "err", err, "recorded", n)
	case n > 0:
		log.Info("event history: recorded entries that expired while no queen watched", "expired", n)
	}
}

// secureEmbeddedConfig returns the embedded broker's Config and, when the
// broker or the HTTP API needs it, the queen's security (see prepareAuth).
func (f *queenFlags) secureEmbeddedConfig(e *env, log *slog.Logger) (embedded.Config, *queenAuth, error) {
	c, err := f.brokerConfig(log)
	if err != nil {
		return c, nil, err
	}
	qa, err := f.prepareAuth(e, &c, log)
	if err != nil {
		return c, nil, err
	}
	if err := c.Validate(); err != nil {
		return c, nil, usageError{err.Error()}
	}
	return c, qa, nil
}

// listenHint adds what to do to an error of listening on addr, given by
// flag: another process holds the port (an exit of 1, not 2: the flag is
// well formed, and a restart may find the port free).
func listenHint(err error, flag, addr string) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return err
	}
	return fmt.Errorf("%s %s: %w; another process holds the port (an rbee queen or nats-server already running?): stop it, or give %s another address", flag, addr, err, flag)
}

// embeddedConfig returns the embedded broker's Config without the queen's
// security: beyond loopback it is refused (the demo's broker).
func (f *queenFlags) embeddedConfig(log *slog.Logger) (embedded.Config, error) {
	c, err := f.brokerConfig(log)
	if err != nil {
		return c, err
	}
	if err := c.Validate(); err != nil {
		return c, usageError{err.Error()}
	}
	return c, nil
}

func (f *queenFlags) brokerConfig(log *slog.Logger) (embedded.Config, error) {
	host, port, err := net.SplitHostPort(f.listen)
	if err != nil {
		return embedded.Config{}, usagef("--listen %q: want host:port", f.listen)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return embedded.Config{}, usagef("--listen %q: bad port", f.listen)
	}
	dir, err := filepath.Abs(f.data)
	if err != nil {
		return embedded.Config{}, usagef("--data %q: %v", f.data, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return embedded.Config{}, fmt.Errorf("--data %q: %w", f.data, err)
	}
	c := embedded.DefaultConfig(dir)
	c.Host, c.Port, c.Logger, c.ConfigFile = host, p, log, f.config
	c.ServerName = f.serverName
	if f.cluster != "" {
		c.Cluster, c.ClusterName = f.cluster, f.clusterName
		if c.ServerName == "" {
			c.ServerName = "rbee-" + strings.NewReplacer(":", "-", ".", "-").Replace(f.cluster)
		}
		if f.routes != "" {
			c.Routes = strings.Split(f.routes, ",")
		}
	} else if f.routes != "" {
		return embedded.Config{}, usagef("--routes needs --cluster")
	}
	return c, nil
}

// queenGCPercent is the garbage collector's target for `rbee queen` unless
// GOGC is set: the embedded broker and the queen share one heap, and under
// overload the collector took CPU the registry writes needed (RELIABILITY.md,
// the overload case). The live heap grows with keys, not with the beat rate,
// so memory stays bounded; it is about three times the live heap instead of
// twice, up to the soft memory limit (queenMemoryShare).
const queenGCPercent = 200

// queenMemoryShare is the share of the machine's memory (or of its cgroup's
// limit, if lower) the queen's heap may reach before the collector works
// harder, unless GOMEMLIMIT is set: with a large registry, three times the
// live heap would otherwise pass what the machine has (BENCHMARKS.md §3).
// The rest is left to what runs beside it: a broker of its own, the page
// cache of the JetStream store.
const queenMemoryShare = 0.4

func queenGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(queenGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		if total := memoryAvailable(); total > 0 {
			debug.SetMemoryLimit(int64(float64(total) * queenMemoryShare))
		}
	}
}

// memoryAvailable returns the machine's memory (gopsutil, as the hive reads
// it), or its cgroup's limit (cgroup v2 memory.max) if lower; 0 if neither
// can be read.
func memoryAvailable() int64 {
	var total int64
	if vm, err := mem.VirtualMemory(); err == nil {
		total = int64(vm.Total)
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 && (total == 0 || v < total) {
			total = v
		}
	}
	return total
}
