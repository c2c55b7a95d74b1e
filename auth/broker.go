package auth

import (
	"encoding/base64"
	"fmt"

	"github.com/nats-io/nkeys"
	"github.com/rbee/heartbeat/token"
)

// QueenUser is the broker user the queens connect as: the callout's own
// user, which the server admits without asking the callout.
const QueenUser = "rbee-queen"

// BrokerAuth is what a nats-server needs to hand its clients to the queens'
// callout: the issuer whose signature it trusts, and the user the queens
// connect as. Every field derives from the queen secret, so every queen of a
// fleet computes the same.
type BrokerAuth struct {
	// Issuer is the public account nkey the callout signs with
	// (auth_callout.issuer).
	Issuer string
	// User and Password are the queens' own user (auth_callout.auth_users).
	User, Password string
	// SysUser and SysPassword are the queens' system account user, with
	// which a queen on an external server ends revoked connections
	// ($SYS.REQ.SERVER.PING.CONNZ and $SYS.REQ.SERVER.<id>.KICK).
	SysUser, SysPassword string
}

// issuer returns the callout's signing key, derived from the secret.
func issuer(s token.Secret) (nkeys.KeyPair, error) {
	return nkeys.FromRawSeed(nkeys.PrefixByteAccount, s.Derived("callout issuer"))
}

// Broker returns the broker settings that go with secret.
func Broker(s token.Secret) (BrokerAuth, error) {
	kp, err := issuer(s)
	if err != nil {
		return BrokerAuth{}, fmt.Errorf("issuer key: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return BrokerAuth{}, fmt.Errorf("issuer key: %w", err)
	}
	return BrokerAuth{
		Issuer: pub, User: QueenUser, Password: base64.RawURLEncoding.EncodeToString(s.Derived("broker queen")),
		SysUser: QueenUser + "-sys", SysPassword: base64.RawURLEncoding.EncodeToString(s.Derived("broker queen system")),
	}, nil
}

// ServerConfig returns the nats-server configuration that sends every client
// but the queens to the callout, and gives the queens a system account user,
// for an operator's server file. It holds the queens' passwords: keep the
// file private.
func (b BrokerAuth) ServerConfig() string {
	return fmt.Sprintf(`authorization {
  users: [ { user: %q, password: %q } ]
  auth_callout {
    issuer: %s
    auth_users: [ %q, %q ]
  }
}
accounts {
  SYS: { users: [ { user: %q, password: %q } ] }
}
system_account: SYS
`, b.User, b.Password, b.Issuer, b.User, b.SysUser, b.SysUser, b.SysPassword)
}
