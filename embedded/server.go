package embedded

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config describes an embedded nats-server.
type Config struct {
	// Host is the client listen address. Loopback unless you mean to serve other machines.
	Host string
	// Port is the client port; -1 picks a free one (tests).
	Port int
	// StoreDir is the JetStream storage directory. Required.
	StoreDir string
	// ServerName names the server; cluster members need distinct names.
	ServerName string
	// MaxMemory caps JetStream memory storage, in bytes.
	MaxMemory int64
	// MaxStore caps JetStream file storage, in bytes.
	MaxStore int64
	// ReadyTimeout bounds the wait for the server to accept connections.
	ReadyTimeout time.Duration
	// ConfigFile is an optional nats-server configuration file (authorization,
	// accounts, nkeys, TLS, permissions). Fields set in this Config win over it.
	ConfigFile string
	// Cluster is the cluster listen address "host:port"; empty means no clustering.
	Cluster string
	// ClusterName names the cluster; every member uses the same one.
	ClusterName string
	// Routes are the other members' cluster URLs, e.g. nats-route://127.0.0.1:6222.
	Routes []string
	// Logger receives the server's log; nil discards it.
	Logger *slog.Logger

	// PingInterval is how often the server pings a client it has heard
	// nothing from; after MaxPingsOut unanswered pings it closes the
	// connection ("Stale Connection", a DISCONNECT advisory). A frozen client
	// is dropped between (MaxPingsOut+1) and (MaxPingsOut+2) × PingInterval
	// after its last message. Zero keeps the configuration file's or
	// nats-server's default (2 min); a file's ping_interval wins.
	PingInterval time.Duration
	// MaxPingsOut is the number of unanswered pings after which a client is
	// dropped. Zero keeps the file's ping_max or nats-server's default (2).
	MaxPingsOut int
	// WriteDeadline bounds one write to a client: a client that stops reading
	// while data waits for it (a frozen subscriber under load) is dropped as a
	// slow consumer after this long. Routes keep nats-server's 10 s unless the
	// file sets cluster.write_deadline. Zero keeps the file's write_deadline
	// or nats-server's default (10 s).
	WriteDeadline time.Duration
	// Callout authorizes the clients (see Callout). Without ConfigFile it is
	// required whenever Host is beyond loopback (NeedsAuth) and used on
	// loopback only with Auth; a ConfigFile decides authorization itself.
	Callout *Callout
	// Auth applies Callout on loopback too.
	Auth bool
}

// DefaultConfig returns a loopback server on the standard port with modest
// JetStream limits, storing under storeDir.
func DefaultConfig(storeDir string) Config {
	return Config{
		Host:         "127.0.0.1",
		Port:         4222,
		StoreDir:     storeDir,
		MaxMemory:    256 << 20, // 256 MiB
		MaxStore:     4 << 30,   // 4 GiB
		ReadyTimeout: 10 * time.Second,
		// A frozen client is dropped 6–8 s after its last message, so the
		// queue group stops handing beats to a paused queen within 8 s.
		PingInterval: 2 * time.Second,
		MaxPingsOut:  2,
		// A client that stops reading under load is dropped within 3 s.
		WriteDeadline: 3 * time.Second,
	}
}

// Validate returns an error wrapping ErrInvalidConfig if the Config cannot work.
func (c Config) Validate() error {
	switch {
	case c.StoreDir == "":
		return fmt.Errorf("%w: StoreDir is required", ErrInvalidConfig)
	case c.Port < -1 || c.Port > 65535:
		return fmt.Errorf("%w: port %d", ErrInvalidConfig, c.Port)
	case c.MaxMemory < 0 || c.MaxStore < 0:
		return fmt.Errorf("%w: negative JetStream limit", ErrInvalidConfig)
	case c.PingInterval < 0 || c.MaxPingsOut < 0 || c.WriteDeadline < 0:
		return fmt.Errorf("%w: negative ping or write setting", ErrInvalidConfig)
	case c.PingInterval > 0 && c.PingInterval < 100*time.Millisecond:
		return fmt.Errorf("%w: PingInterval %s below 100ms", ErrInvalidConfig, c.PingInterval)
	case c.ReadyTimeout <= 0:
		return fmt.Errorf("%w: ReadyTimeout must be positive", ErrInvalidConfig)
	case c.Cluster != "" && c.ClusterName == "":
		return fmt.Errorf("%w: a cluster needs ClusterName", ErrInvalidConfig)
	case len(c.Routes) > 0 && c.Cluster == "":
		return fmt.Errorf("%w: routes need a Cluster listen address", ErrInvalidConfig)
	}
	if c.ConfigFile == "" && c.Callout == nil && (c.Auth || NeedsAuth(c.Host)) {
		return fmt.Errorf("%w: listening on %q beyond loopback needs the auth callout (Callout) or a configuration file",
			ErrInvalidConfig, c.Host)
	}
	if c.Cluster != "" && c.ConfigFile == "" {
		host, _, err := net.SplitHostPort(c.Cluster)
		if err != nil {
			return fmt.Errorf("%w: cluster address %q: %v", ErrInvalidConfig, c.Cluster, err)
		}
		if NeedsAuth(host) {
			return fmt.Errorf("%w: cluster address %s is beyond loopback: routes from other machines need "+
				"authorization shared by every member; give a configuration file with cluster { authorization { … } }",
				ErrInvalidConfig, c.Cluster)
		}
	}
	return nil
}

// Server is a running embedded nats-server. Its methods may be called
// concurrently, Shutdown included; Shutdown is safe to call twice.
type Server struct {
	srv    *server.Server
	js     *server.JetStreamConfig // what JetStream started with; nil without JetStream
	lock   *dirLock
	logger *slog.Logger

	mu          sync.Mutex // guards down and the re-enabling of JetStream
	down        bool
	shutOnce    sync.Once
	storeFailed atomic.Bool // nats-server reported a failed store write
	refused     refusals
}

// Refusals returns how many times since start the server refused a client's
// publish or subscription for its permissions, and a connection for its
// credentials (the auth callout's refusals included), as the server logged them.
func (s *Server) Refusals() (permission, authentication uint64) {
	return s.refused.permission.Load(), s.refused.authentication.Load()
}

// Options returns the nats-server options this Config stands for, or an error
// wrapping ErrInvalidConfig.
func (c Config) Options() (*server.Options, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	opts := &server.Options{}
	if c.ConfigFile != "" {
		o, err := server.ProcessConfigFile(c.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
		opts = o
	}
	opts.Host = c.Host
	opts.Port = c.Port
	opts.ServerName = c.ServerName
	opts.JetStream = true
	opts.StoreDir = c.StoreDir
	opts.JetStreamMaxMemory = c.MaxMemory
	opts.JetStreamMaxStore = c.MaxStore
	opts.NoSigs = true
	opts.NoLog = c.Logger == nil
	// A configuration file's own ping and write settings win over the defaults.
	if opts.PingInterval == 0 {
		opts.PingInterval = c.PingInterval
	}
	if opts.MaxPingsOut == 0 {
		opts.MaxPingsOut = c.MaxPingsOut
	}
	if opts.WriteDeadline == 0 && c.WriteDeadline > 0 {
		opts.WriteDeadline = c.WriteDeadline
		if opts.Cluster.WriteDeadline == 0 {
			opts.Cluster.WriteDeadline = server.DEFAULT_FLUSH_DEADLINE
		}
	}
	if c.ConfigFile == "" && (c.Auth || NeedsAuth(c.Host)) {
		if err := configureCallout(opts, c.Callout); err != nil {
			return nil, err
		}
	}
	if _, err := configureAdvisories(opts); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if c.Cluster != "" {
		host, port, err := net.SplitHostPort(c.Cluster)
		if err != nil {
			return nil, fmt.Errorf("%w: cluster address %q: %v", ErrInvalidConfig, c.Cluster, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("%w: cluster port %q", ErrInvalidConfig, port)
		}
		opts.Cluster.Host = host
		opts.Cluster.Port = p
		opts.Cluster.Name = c.ClusterName
		if len(c.Routes) > 0 {
			opts.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
		}
	}
	return opts, nil
}

// New starts a server and waits until it accepts connections. It returns an
// error wrapping ErrInvalidConfig for a bad Config, ErrListen if the client
// address cannot be listened on, ErrDataDirInUse if
// another server holds StoreDir, or ErrNotReady if the server did not come up
// within ReadyTimeout.
//
// Without ConfigFile, a server whose Host is beyond loopback (or with Auth
// set) admits Callout's user and sends every other client to the callout.
func New(c Config) (*Server, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: store directory: %v", ErrInvalidConfig, err)
	}
	lock, err := lockDir(c.StoreDir)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Server, error) {
		lock.release()
		return nil, err
	}
	// A taken port would otherwise only show as a ready timeout.
	if c.Port > 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)))
		if err != nil {
			return fail(fmt.Errorf("%w: %w", ErrListen, err))
		}
		_ = ln.Close()
	}
	s, err := Start(opts, c.Logger, c.ReadyTimeout)
	if err != nil {
		return fail(err)
	}
	s.lock = lock
	return s, nil
}

// Start starts a server from raw nats-server options, for callers that need
// settings Config does not carry. logger may be nil. Start takes no lock on
// the store directory and generates no credentials; New does.
func Start(opts *server.Options, logger *slog.Logger, ready time.Duration) (*Server, error) {
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "nats-server")
	s := &Server{srv: srv, logger: logger}
	srv.SetLoggerV2(slogLogger{l: logger, storeFailed: &s.storeFailed, refusals: &s.refused}, false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(ready) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("%w: no connections accepted within %s", ErrNotReady, ready)
	}
	s.srv = srv
	if opts.JetStream {
		// The configuration nats-server itself starts JetStream with.
		s.js = &server.JetStreamConfig{
			StoreDir:     opts.StoreDir,
			SyncInterval: opts.SyncInterval,
			SyncAlways:   opts.SyncAlways,
			Strict:       !opts.NoJetStreamStrict,
			MaxMemory:    opts.JetStreamMaxMemory,
			MaxStore:     opts.JetStreamMaxStore,
			Domain:       opts.JetStreamDomain,
			CompressOK:   true,
			UniqueTag:    opts.JetStreamUniqueTag,
		}
	}
	return s, nil
}

// ClientURL returns the URL clients connect to, e.g. nats://127.0.0.1:4222.
// It carries no credentials.
func (s *Server) ClientURL() string { return s.srv.ClientURL() }

// NATS returns the underlying nats-server, for tests and advanced callers.
func (s *Server) NATS() *server.Server { return s.srv }

// Shutdown stops the server, waits for it to finish and releases the store
// directory. It is safe to call more than once and concurrently.
func (s *Server) Shutdown() {
	s.shutOnce.Do(func() {
		s.mu.Lock()
		s.down = true
		s.mu.Unlock()
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
		s.lock.release()
	})
}
