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
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/gpu"
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
	// synopsis is the usage line after "rbee <name>"; examples are shown by -h.
	synopsis string
	examples []string
}

var commands []command

func init() {
	commands = []command{
		{"queen", "keep the registry (embedded NATS broker unless --nats-url)", runQueen,
			"[--listen 127.0.0.1:4222] [--data DIR] [--nats-url URL[,URL...]] [--http ADDR|off] [flags]", []string{
				"rbee queen",
				"rbee queen --listen 0.0.0.0:4222 --config server.conf --data /var/lib/rbee",
				"rbee queen --nats-url nats://10.0.0.5:4222,nats://10.0.0.6:4222 --replicas 3",
			}},
		{"hive", "publish a machine's stats and its workers", runHive,
			"--hive-id ID [--nats-url URL] [--interval 30s] [flags]", []string{
				"rbee hive --hive-id gpu-node-1",
				"rbee hive --hive-id gpu-node-1 --nats-url nats://queen:4222 --token-file /etc/rbee/hive.token",
			}},
		{"worker", "publish a worker's heartbeats (--simulate N for many)", runWorker,
			"--hive-id ID --worker-id ID [--model M] [--device D] [--slots N] [--url URL] [flags]", []string{
				"rbee worker --hive-id gpu-node-1 --worker-id llama-0 --model meta-llama/Llama-3.1-8B-Instruct --device cuda:0",
				"rbee worker --hive-id load --worker-id sim --simulate 1000 --interval 5s",
			}},
		{"status", "print the registry as tables, with filters (--json for scripts)", runStatus,
			"[--hive ID] [--model M] [--status S[,S...]] [--not-alive] [--json] [flags]", []string{
				"rbee status",
				"rbee status --not-alive",
				"rbee status --hive gpu-node-1",
				"rbee status --status busy,draining --json",
			}},
		{"watch", "print registry events as they happen; --since replays history first", runWatch,
			"[--since 1h] [--json] [flags]", []string{
				"rbee watch",
				"rbee watch --since 1h",
				"rbee watch --json | jq .",
			}},
		{"events", "print the event history: what happened to a machine", runEvents,
			"[--hive ID] [--since 24h|RFC3339] [--event T[,T...]] [--exclude T[,T...]] [--all] [--follow] [--json] [flags]", []string{
				"rbee events --hive gpu-node-1 --since 24h",
				"rbee events --event expired,disconnected --since 7d",
				"rbee events --all --follow",
				"rbee events --since 2026-01-31T22:00:00Z --json",
			}},
		{"check", "exit 0 if a worker or hive is present and alive (a queen: ok), 1 if not, 2 on bad input", runCheck,
			"worker HIVE.WORKER | hive HIVE | queen [HTTP-ADDR] [flags]", []string{
				"rbee check worker gpu-node-1.llama-0",
				"rbee check hive gpu-node-1 --nats-url nats://queen:4222",
				"rbee check queen 127.0.0.1:8500",
			}},
		{"decode", "msgpack on stdin to JSON on stdout", runDecode,
			"[--compact=false] < payload.msgpack", []string{
				"nats sub 'rbee.hb.>' --translate 'rbee decode'",
				"nats kv get rbee_workers gpu-node-1.llama-0 --raw | rbee decode",
			}},
		{"demo", "a whole system in one process: queen, hive, workers, expiry, goodbye", runDemo,
			"[--listen 127.0.0.1:4222 | --nats-url URL] [--interval 1s] [--stay] [flags]", []string{
				"rbee demo",
				"rbee demo --listen 127.0.0.1:-1 --stay",
				"rbee demo --nats-url nats://127.0.0.1:4222 --prefix demo",
			}},
		{"token", "mint, derive and revoke the agents' credentials (on the queen's machine)", runToken,
			"hive ID | worker HIVE.WORKER | viewer NAME | revoke hive ID | revoke viewer NAME | server-config [--data DIR] [flags]", []string{
				"rbee token hive gpu-node-1 --data /var/lib/rbee > gpu-node-1.token",
				"RBEE_TOKEN_FILE=gpu-node-1.token rbee token worker gpu-node-1.llama-0",
				"rbee token viewer grafana --data /var/lib/rbee",
				"rbee token revoke hive gpu-node-1 --data /var/lib/rbee",
				"rbee token server-config --data /var/lib/rbee >> nats-server.conf",
			}},
		{"version", "print the version", runVersion, "", nil},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: rbee <command> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'rbee <command> -h' (or 'rbee help <command>') for the flags of a command.")
}

func findCommand(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// versionString is the one version line: release, commit and toolchain.
func versionString() string {
	s := "rbee " + Version
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.revision":
				rev = kv.Value
			case "vcs.modified":
				if kv.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			s += " (" + rev + dirty + ")"
		}
	}
	s += " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	if gpu.NVML {
		s += " nvml"
	} else {
		s += " (no nvml: no GPU data; build with -tags nvml)"
	}
	return s
}

func runVersion(e *env, args []string) error {
	fs := newFlagSet(e, "version")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	fmt.Fprintln(e.stdout, versionString())
	return nil
}

// Main runs the subcommand named by args[0] and returns the exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) == 2 && args[0] == "help" && findCommand(args[1]) != nil {
			args = []string{args[1], "-h"}
		} else {
			usage(stdout)
			if len(args) == 0 {
				return 2
			}
			return 0
		}
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = []string{"version"}
	}
	e := &env{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(e, args[1:])
		var ue usageError
		var ce checkError
		var xc interface{ ExitCode() int } // a supervised engine's exit: the worker exits with its code
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp), errors.Is(err, errStoppedWaiting):
			return 0
		case errors.As(err, &xc):
			fmt.Fprintf(stderr, "rbee %s: %s\n", c.name, termSafe(oneLine(err.Error())))
			return xc.ExitCode()
		case errors.As(err, &ce):
			fmt.Fprintf(stderr, "rbee %s: %s\n", c.name, termSafe(oneLine(err.Error())))
			return 1
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "rbee %s: %s\n", c.name, termSafe(oneLine(flagHint(err.Error(), c.name))))
			return 2
		default:
			fmt.Fprintf(stderr, "rbee %s: %s\n", c.name, termSafe(oneLine(withAdvice(err))))
			return 1
		}
	}
	fmt.Fprintf(stderr, "rbee: unknown command %q (try 'rbee help')\n", termSafe(args[0]))
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
	// tokenFile names the file holding this agent's rbee token; the token
	// itself comes from it or from RBEE_TOKEN, never from a flag's value.
	tokenFile string
	token     string
	// user and password are the queens' own broker user, set by the queen
	// for its embedded broker, never by a flag.
	user, password string
	// urlFromEnv: --nats-url was not given and NATS_URL set it.
	urlFromEnv bool
}

// newFlagSet returns the flag set of command name. Its -h output goes to
// stdout: the command's one-line description, usage line and examples, then
// its flags. A parse error prints nothing here: Main prints it in one line
// with a hint.
func newFlagSet(e *env, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("rbee "+name, flag.ContinueOnError)
	out := &flagErrors{}
	fs.SetOutput(out)
	fs.Usage = func() {
		if out.failed {
			// Called after a parse error: the error is Main's to print.
			out.failed = false
			return
		}
		w := e.stdout
		if c := findCommand(name); c != nil {
			fmt.Fprintf(w, "rbee %s: %s\n\nusage: rbee %s %s\n", name, c.summary, name, c.synopsis)
			if len(c.examples) > 0 {
				fmt.Fprintln(w, "\nexamples:")
				for _, ex := range c.examples {
					fmt.Fprintln(w, "  "+ex)
				}
			}
		} else {
			fmt.Fprintf(w, "usage: rbee %s [flags]\n", name)
		}
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(w, "\nflags:")
			fs.SetOutput(w)
			fs.PrintDefaults()
			fs.SetOutput(out)
		}
	}
	return fs
}

// flagErrors is a flag set's output outside -h: the flag package writes
// there only the error it also returns, which it marks.
type flagErrors struct{ failed bool }

func (f *flagErrors) Write(p []byte) (int, error) {
	f.failed = true
	return len(p), nil
}

// flagHint is added to the flag package's own parse errors.
func flagHint(msg, name string) string {
	for _, p := range []string{"flag provided but not defined", "invalid value", "invalid boolean", "flag needs an argument", "bad flag syntax"} {
		if strings.HasPrefix(msg, p) {
			return msg + " (see 'rbee " + name + " -h')"
		}
	}
	return msg
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
	fs.StringVar(&c.tokenFile, "token-file", os.Getenv("RBEE_TOKEN_FILE"), "`FILE` holding this agent's rbee token, made by rbee token (env RBEE_TOKEN_FILE, or the token itself in RBEE_TOKEN)")
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
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "nats-url" })
	c.urlFromEnv = !given && c.natsURL != "" && c.natsURL == os.Getenv("NATS_URL")
	if _, err := subjects.New(c.prefix); err != nil {
		return usageError{err.Error()}
	}
	if _, err := c.level(); err != nil {
		return err
	}
	return c.loadToken()
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
	cfg.Token, cfg.User, cfg.Password = c.token, c.user, c.password
	cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = c.tlsCA, c.tlsCert, c.tlsKey
	cfg.Logger = log
	return cfg
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
	if c.urlFromEnv {
		msg := "no NATS server answers yet at NATS_URL from the environment; retrying"
		if name == "rbee-queen" {
			msg += " (unset NATS_URL, or give --nats-url \"\", for the embedded broker)"
		}
		log.Warn(msg, "NATS_URL", redactURL(c.natsURL))
	} else {
		log.Warn("no NATS server answers yet; retrying", "url", redactURL(c.natsURL))
	}
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

// redactURL returns a list of NATS URLs with any password replaced by xxxxx.
func redactURL(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
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
