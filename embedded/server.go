package embedded

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
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
	case c.ReadyTimeout <= 0:
		return fmt.Errorf("%w: ReadyTimeout must be positive", ErrInvalidConfig)
	case c.Cluster != "" && c.ClusterName == "":
		return fmt.Errorf("%w: a cluster needs ClusterName", ErrInvalidConfig)
	case len(c.Routes) > 0 && c.Cluster == "":
		return fmt.Errorf("%w: routes need a Cluster listen address", ErrInvalidConfig)
	}
	return nil
}

// Server is a running embedded nats-server. Its methods may be called concurrently.
type Server struct {
	srv  *server.Server
	once sync.Once
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
// error wrapping ErrInvalidConfig for a bad Config, or ErrNotReady if the
// server did not come up within ReadyTimeout.
func New(c Config) (*Server, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	// A taken port would otherwise only show as a ready timeout.
	if c.Port > 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
		_ = ln.Close()
	}
	return Start(opts, c.Logger, c.ReadyTimeout)
}

// Start starts a server from raw nats-server options, for callers that need
// settings Config does not carry. logger may be nil.
func Start(opts *server.Options, logger *slog.Logger, ready time.Duration) (*Server, error) {
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if logger != nil {
		srv.SetLoggerV2(slogLogger{logger.With("component", "nats-server")}, false, false, false)
	}
	go srv.Start()
	if !srv.ReadyForConnections(ready) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("%w: no connections accepted within %s", ErrNotReady, ready)
	}
	return &Server{srv: srv}, nil
}

// ClientURL returns the URL clients connect to, e.g. nats://127.0.0.1:4222.
func (s *Server) ClientURL() string { return s.srv.ClientURL() }

// NATS returns the underlying nats-server, for tests and advanced callers.
func (s *Server) NATS() *server.Server { return s.srv }

// Shutdown stops the server and waits for it to finish. It is safe to call
// more than once.
func (s *Server) Shutdown() {
	s.once.Do(func() {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	})
}
