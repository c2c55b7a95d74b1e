package cli

import (
	"errors"
	"strings"

	"github.com/nats-io/nats.go"
)

// advice returns what to do about err, for the errors whose own text says
// only what went wrong, or "" when err says enough.
func advice(err error) string {
	msg := strings.ToLower(err.Error())
	switch {
	case errors.Is(err, nats.ErrNoResponders) || strings.Contains(msg, "no responders available"):
		return "the NATS server answers but nothing serves the request: JetStream is not enabled there. " +
			"Enable it (nats-server -js, or jetstream {} in its configuration), or run rbee queen without --nats-url, which starts a broker with JetStream"
	case errors.Is(err, nats.ErrNoServers) || strings.Contains(msg, "no servers available"):
		return "no NATS server answers at that address: start rbee queen (it runs the broker), or point --nats-url (or NATS_URL) at your server"
	case errors.Is(err, nats.ErrAuthorization) || strings.Contains(msg, "authorization violation"):
		return "the server refused this identity: give the credentials it expects (--creds, --nkey, or nats://user:password@host in --nats-url; see docs/security.md)"
	case errors.Is(err, nats.ErrTimeout) || strings.Contains(msg, "context deadline exceeded"):
		return "the server did not answer in time: check that it is reachable and that JetStream is ready (a cluster may still be electing its leader)"
	}
	return ""
}

// withAdvice returns err's text followed by what to do, where advice has it.
func withAdvice(err error) string {
	if a := advice(err); a != "" {
		return err.Error() + " — " + a
	}
	return err.Error()
}
