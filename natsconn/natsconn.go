// Package natsconn connects every rbee role to NATS the same way: a list of
// servers for a cluster, credentials, TLS, endless reconnects, and no
// reconnect buffer, so that beats built while the connection is down are
// dropped rather than replayed stale after the reconnect.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrInvalidConfig is returned (wrapped) by Connect for a Config that cannot work.
var ErrInvalidConfig = errors.New("invalid nats connection config")

// Config describes a connection to NATS.
type Config struct {
	// URL is one server URL or a comma-separated list (a cluster).
	URL string
	// Name is the connection name the server shows, e.g. "rbee-queen".
	Name string
	// CredsFile is a NATS .creds file (user JWT and nkey seed).
	CredsFile string
	// NKeyFile is a file holding an nkey seed (nkey authentication without JWT).
	NKeyFile string
	// Token is an rbee token (package token) sent as the connection's auth
	// token, for a broker that asks the queens' auth callout.
	Token string
	// User and Password authenticate with a user and password (the queens'
	// own user on a broker with the callout).
	User, Password string
	// TLSCAFile, TLSCertFile and TLSKeyFile enable TLS: the CA to trust, and a
	// client certificate for mutual TLS.
	TLSCAFile, TLSCertFile, TLSKeyFile string
	// ReconnectWait is the pause between reconnect attempts.
	ReconnectWait time.Duration
	// ConnectTimeout bounds each connection attempt.
	ConnectTimeout time.Duration
	// RetryOnFailedConnect keeps trying in the background when no server
	// answers at start, instead of failing Connect.
	RetryOnFailedConnect bool
	// Logger receives connection events; nil discards.
	Logger *slog.Logger
	// OnAsyncError, if set, is called for asynchronous errors such as
	// permission violations, after they are logged.
	OnAsyncError func(error)
}

// DefaultConfig returns a Config for url named name, reconnecting every 250 ms.
func DefaultConfig(url, name string) Config {
	return Config{URL: url, Name: name, ReconnectWait: 250 * time.Millisecond, ConnectTimeout: 2 * time.Second}
}

// Options returns the nats.go options for c, or an error wrapping ErrInvalidConfig.
func (c Config) Options() ([]nats.Option, error) {
	if strings.TrimSpace(c.URL) == "" {
		return nil, fmt.Errorf("%w: no server URL", ErrInvalidConfig)
	}
	n := 0
	for _, set := range []bool{c.CredsFile != "", c.NKeyFile != "", c.Token != "", c.User != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, fmt.Errorf("%w: use one of a creds file, an nkey file, a token or a user, not several", ErrInvalidConfig)
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "nats")
	opts := []nats.Option{
		nats.Name(c.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(c.ReconnectWait),
		nats.ReconnectJitter(c.ReconnectWait/2, c.ReconnectWait/2),
		nats.ReconnectBufSize(-1),
		nats.Timeout(c.ConnectTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected", "server", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("nats error", "subject", subject, "err", err)
			if c.OnAsyncError != nil {
				c.OnAsyncError(err)
			}
		}),
	}
	if c.RetryOnFailedConnect {
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(strings.TrimSpace(c.Token)))
	}
	if c.User != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: nkey file: %v", ErrInvalidConfig, err)
		}
		opts = append(opts, o)
	}
	if c.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(c.TLSCAFile))
	}
	if c.TLSCertFile != "" || c.TLSKeyFile != "" {
		if c.TLSCertFile == "" || c.TLSKeyFile == "" {
			return nil, fmt.Errorf("%w: a client certificate needs both cert and key files", ErrInvalidConfig)
		}
		opts = append(opts, nats.ClientCert(c.TLSCertFile, c.TLSKeyFile))
	}
	return opts, nil
}

// Connect opens the connection. It returns an error wrapping
// ErrInvalidConfig, or the connection error from nats.go.
func Connect(c Config) (*nats.Conn, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.URL, err)
	}
	return nc, nil
}

// WaitConnected returns once nc is connected, or ctx's error. With
// RetryOnFailedConnect, Connect returns before any server has answered; a
// long-running role waits here, so that it can be started before its broker.
func WaitConnected(ctx context.Context, nc *nats.Conn) error {
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	for {
		switch nc.Status() {
		case nats.CONNECTED:
			return nil
		case nats.CLOSED:
			return nats.ErrConnectionClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// DefaultFlushTimeout bounds Flush when ctx has no deadline.
const DefaultFlushTimeout = 5 * time.Second

// Flush waits until the server has processed everything sent on nc, within
// ctx, or DefaultFlushTimeout if ctx has no deadline.
func Flush(ctx context.Context, nc *nats.Conn) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultFlushTimeout)
		defer cancel()
	}
	return nc.FlushWithContext(ctx)
}

// ID returns the identity of nc's current connection as the server's
// advisories name it, "<server_id>/<client_id>", or "" while disconnected.
// It changes on every reconnect.
func ID(nc *nats.Conn) string {
	if nc == nil || !nc.IsConnected() {
		return ""
	}
	id, err := nc.GetClientID()
	if err != nil {
		return ""
	}
	return nc.ConnectedServerId() + "/" + strconv.FormatUint(id, 10)
}
