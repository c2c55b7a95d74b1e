// Package cli implements the rbee command line: one function per subcommand,
// each parsing its flags into a Config of the package that does the work.
// Main returns the process exit code: 0 on success, 1 on a runtime failure,
// 2 on bad flags or IDs, each with a one-line reason on stderr.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/subjects"
)

// Version is the rbee version reported in heartbeats.
var Version = "0.1.0"

// DefaultURL is where the client roles connect when neither --nats-url nor NATS_URL is set.
const DefaultURL = "nats://127.0.0.1:4222"

type env struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// usageError is a bad invocation: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

type command struct {
	name    string
	summary string
	run     func(e *env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"queen", "keep the registry (embedded NATS broker unless --nats-url)", runQueen},
		{"hive", "publish a machine's stats and its workers", runHive},
		{"worker", "publish a worker's heartbeats (--simulate N for many)", runWorker},
		{"status", "print the registry as tables (--json for scripts)", runStatus},
		{"watch", "print registry events as they happen (--json for scripts)", runWatch},
		{"decode", "msgpack on stdin to JSON on stdout", runDecode},
		{"demo", "a whole system in one process: queen, hive, workers, expiry, goodbye", runDemo},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: rbee <command> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'rbee <command> -h' for the flags of a command.")
}

// Main runs the subcommand named by args[0] and returns the exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	e := &env{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(e, args[1:])
		var ue usageError
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp), errors.Is(err, errStoppedWaiting):
			return 0
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "rbee %s: %s\n", c.name, oneLine(err.Error()))
			return 2
		default:
			fmt.Fprintf(stderr, "rbee %s: %s\n", c.name, oneLine(err.Error()))
			return 1
		}
	}
	fmt.Fprintf(stderr, "rbee: unknown command %q (try 'rbee help')\n", args[0])
	return 2
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }

// common holds the flags every role takes.
type common struct {
	prefix   string
	natsURL  string
	creds    string
	nkey     string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	logLevel string
}

func newFlagSet(e *env, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("rbee "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return fs
}

func (c *common) register(fs *flag.FlagSet, defaultURL string) {
	url := os.Getenv("NATS_URL")
	if url == "" {
		url = defaultURL
	}
	fs.StringVar(&c.prefix, "prefix", subjects.DefaultPrefix, "subject and bucket prefix")
	fs.StringVar(&c.natsURL, "nats-url", url, "NATS server URL, or a comma-separated list for a cluster (env NATS_URL)")
	fs.StringVar(&c.creds, "creds", os.Getenv("NATS_CREDS"), "NATS credentials file (env NATS_CREDS)")
	fs.StringVar(&c.nkey, "nkey", os.Getenv("NATS_NKEY"), "file holding an nkey seed (env NATS_NKEY)")
	fs.StringVar(&c.tlsCA, "tls-ca", os.Getenv("NATS_CA"), "CA certificate to trust for TLS (env NATS_CA)")
	fs.StringVar(&c.tlsCert, "tls-cert", os.Getenv("NATS_CERT"), "client certificate for mutual TLS (env NATS_CERT)")
	fs.StringVar(&c.tlsKey, "tls-key", os.Getenv("NATS_KEY"), "client key for mutual TLS (env NATS_KEY)")
	fs.StringVar(&c.logLevel, "log-level", c.logLevelDefault(), "debug, info, warn or error")
}

// parse parses args and checks the common flags, returning a usageError.
func (c *common) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if _, err := subjects.New(c.prefix); err != nil {
		return usageError{err.Error()}
	}
	if _, err := c.level(); err != nil {
		return err
	}
	return nil
}

func (c *common) level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.logLevel)); err != nil {
		return 0, usagef("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	return l, nil
}

func (c *common) logger(e *env) *slog.Logger {
	l, _ := c.level()
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: l}))
}

func (c *common) scheme() subjects.Scheme {
	s, _ := subjects.New(c.prefix)
	return s
}

func (c *common) connConfig(name string, log *slog.Logger) natsconn.Config {
	cfg := natsconn.DefaultConfig(c.natsURL, name)
	cfg.CredsFile, cfg.NKeyFile = c.creds, c.nkey
	cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = c.tlsCA, c.tlsCert, c.tlsKey
	cfg.Logger = log
	return cfg
}

func (c *common) connect(name string, log *slog.Logger) (*nats.Conn, error) {
	return dial(c.connConfig(name, log))
}

func dial(cfg natsconn.Config) (*nats.Conn, error) {
	nc, err := natsconn.Connect(cfg)
	if err != nil {
		if errors.Is(err, natsconn.ErrInvalidConfig) {
			return nil, usageError{err.Error()}
		}
		return nil, err
	}
	return nc, nil
}

// errStoppedWaiting ends a role stopped (SIGINT, SIGTERM) before any server
// answered: a clean exit.
var errStoppedWaiting = errors.New("stopped while waiting for NATS")

// connectWaiting connects a long-running role (queen, hive, worker): when no
// server answers yet it says so once and keeps trying until one does or ctx
// ends, so that agents may start before their broker.
func (c *common) connectWaiting(ctx context.Context, name string, log *slog.Logger) (*nats.Conn, error) {
	cfg := c.connConfig(name, log)
	cfg.RetryOnFailedConnect = true
	nc, err := dial(cfg)
	if err != nil {
		return nil, err
	}
	if nc.IsConnected() {
		return nc, nil
	}
	log.Warn("no NATS server answers yet; retrying", "url", c.natsURL)
	if err := natsconn.WaitConnected(ctx, nc); err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, errStoppedWaiting
		}
		return nil, err
	}
	log.Info("connected to NATS", "server", nc.ConnectedUrlRedacted())
	return nc, nil
}

type natsConnCloser struct{ nc *nats.Conn }

func (c *natsConnCloser) Close() {
	if c.nc != nil {
		c.nc.Close()
	}
}

func (c *common) logLevelDefault() string {
	if c.logLevel != "" {
		return c.logLevel
	}
	return "info"
}
