package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/auth"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/token"
)

// queenAuth is the queen's security: the secret its tokens are minted
// under, whether it serves the broker's auth callout, and whether its HTTP
// API asks for bearer tokens.
type queenAuth struct {
	secret  token.Secret
	broker  auth.BrokerAuth
	callout bool // the broker sends its clients to this queen's callout
	http    bool // the HTTP API listens beyond loopback: bearer tokens
	sysConn *nats.Conn
}

// prepareAuth loads or creates the queen's secret and, for an embedded
// broker beyond loopback without --config, sets ec's callout. ec is nil with
// --nats-url. It sets the queen's own broker user on f.
func (f *queenFlags) prepareAuth(e *env, ec *embedded.Config, log *slog.Logger) (*queenAuth, error) {
	a := &queenAuth{}
	if f.http != "off" {
		host, _, _ := net.SplitHostPort(f.http)
		a.http = embedded.NeedsAuth(host)
	}
	if ec != nil {
		a.callout = f.authCallout || (f.config == "" && embedded.NeedsAuth(ec.Host))
	} else {
		a.callout = f.authCallout
	}
	if ec == nil && !a.callout && !a.http {
		return nil, nil // an external broker with its own authorization, a loopback API
	}
	dir, err := filepath.Abs(f.data)
	if err != nil {
		return nil, usagef("--data %q: %v", f.data, err)
	}
	secret, created, err := token.LoadOrCreateSecret(secretPath(dir))
	if err != nil {
		return nil, err
	}
	a.secret = secret
	if a.broker, err = auth.Broker(secret); err != nil {
		return nil, err
	}
	if created {
		log.Info("queen secret created", "file", secretPath(dir))
	}
	if a.callout {
		if ec != nil && f.config == "" {
			ec.Callout = &embedded.Callout{Issuer: a.broker.Issuer, User: a.broker.User, Password: a.broker.Password}
		}
		if f.creds == "" && f.nkey == "" && f.token == "" && !strings.Contains(f.natsURL, "@") {
			f.user, f.password = a.broker.User, a.broker.Password
		}
		if created {
			fmt.Fprintf(e.stderr, "rbee queen: agents beyond loopback need a token; on this machine run\n"+
				"  rbee token hive <ID> --data %s > hive.token\nand start the hive with --token-file hive.token (docs/security.md)\n", f.data)
		}
	}
	if !a.callout && !a.http {
		return nil, nil
	}
	return a, nil
}

// start starts the auth service on the queen's connection nc. srv is the
// embedded broker (nil with --nats-url): revoked connections are ended on it
// directly, and on an external broker through the queens' system user.
func (a *queenAuth) start(ctx context.Context, f *queenFlags, nc *nats.Conn, srv *embedded.Server, log *slog.Logger) (*auth.Service, error) {
	ac := auth.DefaultConfig(a.secret)
	ac.Prefix, ac.Replicas, ac.Logger, ac.Callout = f.prefix, f.replicas, log, a.callout
	ac.StartTimeout = 2 * time.Minute // as long as the queen waits for JetStream (a cluster electing its leader)
	switch {
	case srv != nil:
		ac.Kick = func(_ context.Context, match func(string) bool) (int, error) { return srv.Kick(match), nil }
	case a.callout:
		cfg := f.connConfig("rbee-queen-sys", log)
		cfg.Token, cfg.CredsFile, cfg.NKeyFile = "", "", ""
		cfg.User, cfg.Password = a.broker.SysUser, a.broker.SysPassword
		sys, err := natsconn.Connect(cfg)
		if err != nil {
			log.Warn("no system account user: revoked identities are refused at their next connect, live connections stay", "err", err)
		} else {
			a.sysConn = sys
			ac.Kick = auth.SystemKick(sys, 2*time.Second)
		}
	}
	svc, err := auth.New(nc, ac)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	if err := svc.Start(ctx); err != nil {
		a.stop(nil)
		return nil, fmt.Errorf("auth service: %w", err)
	}
	if a.callout {
		log.Info("auth callout serving", "issuer", a.broker.Issuer)
	}
	return svc, nil
}

func (a *queenAuth) stop(svc *auth.Service) {
	if svc != nil {
		svc.Stop()
	}
	if a.sysConn != nil {
		a.sysConn.Close()
	}
}

// brokerRefusals exports the embedded broker's own count of refused
// publishes, subscriptions and connections.
func brokerRefusals(srv *embedded.Server) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "rbee_broker_permission_violations_total",
		Help: "Publishes and subscriptions the embedded broker refused for the client's permissions.",
	}, func() float64 { p, _ := srv.Refusals(); return float64(p) })
}

// brokerAuthFailures exports the embedded broker's count of refused connections.
func brokerAuthFailures(srv *embedded.Server) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "rbee_broker_authentication_failures_total",
		Help: "Connections the embedded broker refused for their credentials.",
	}, func() float64 { _, a := srv.Refusals(); return float64(a) })
}
