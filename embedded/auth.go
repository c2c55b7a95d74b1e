package embedded

import (
	"fmt"
	"net"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"
)

// Callout is how the broker authorizes its clients beyond loopback: it
// admits User with Password directly (the queens, which serve the callout)
// and asks the auth callout about every other client, trusting the answers
// Issuer signed. Package auth derives all three from the queen's secret.
type Callout struct {
	// Issuer is the public account nkey whose signed answers the broker trusts.
	Issuer string
	// User and Password are the queens' own user.
	User, Password string
}

// NeedsAuth reports whether a server listening on host serves other machines:
// anything but a loopback address or "localhost", including "" and the
// unspecified addresses (every interface). A name is not resolved: only
// "localhost" counts as loopback.
func NeedsAuth(host string) bool {
	h := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(h, "localhost") {
		return false
	}
	ip := net.ParseIP(h)
	return ip == nil || !ip.IsLoopback()
}

// configureCallout adds the queens' user and the auth callout to opts.
func configureCallout(opts *server.Options, c *Callout) error {
	if c.Issuer == "" || c.User == "" || c.Password == "" {
		return fmt.Errorf("%w: the callout needs an issuer, a user and a password", ErrInvalidConfig)
	}
	// Kept as a bcrypt hash, as nats-server advises for a configured
	// password; the least cost, as the password is 32 random bytes, not a
	// word to guess, and every queen connection pays the cost.
	hash, err := bcrypt.GenerateFromPassword([]byte(c.Password), bcrypt.MinCost)
	if err != nil {
		return fmt.Errorf("%w: queens' password: %v", ErrInvalidConfig, err)
	}
	opts.Users = append(opts.Users, &server.User{Username: c.User, Password: string(hash)})
	opts.AuthCallout = &server.AuthCallout{Issuer: c.Issuer, AuthUsers: []string{c.User}}
	return nil
}

// Kick closes every client connection whose authorized user name match
// accepts and returns how many it closed. It may be called concurrently.
func (s *Server) Kick(match func(user string) bool) int {
	n := 0
	for offset := 0; ; {
		cz, err := s.srv.Connz(&server.ConnzOptions{Username: true, Offset: offset, Limit: 1024})
		if err != nil || len(cz.Conns) == 0 {
			return n
		}
		for _, ci := range cz.Conns {
			if match(ci.AuthorizedUser) && s.srv.DisconnectClientByID(ci.Cid) == nil {
				n++
			}
		}
		offset += len(cz.Conns)
		if offset >= cz.Total {
			return n
		}
	}
}
