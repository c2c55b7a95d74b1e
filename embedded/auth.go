package embedded

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// CredentialsFile is the name of the file in the store directory that keeps
// the generated credentials (mode 0600).
const CredentialsFile = "broker-credentials.json"

// Credentials are the user and password the embedded broker requires when it
// listens beyond loopback without a configuration file.
type Credentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
	// File is where they are kept.
	File string `json:"-"`
	// Generated is true when this start created them: the one time the
	// caller should show them.
	Generated bool `json:"-"`
}

// URL returns clientURL (e.g. ClientURL's nats://10.0.0.5:4222) with the
// credentials as its user info, or clientURL unchanged if it does not parse.
func (c *Credentials) URL(clientURL string) string {
	u, err := url.Parse(clientURL)
	if err != nil {
		return clientURL
	}
	u.User = url.UserPassword(c.User, c.Password)
	return u.String()
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

// loadOrCreateCredentials reads the credentials kept in dir, or generates and
// stores them (user rbee, 24 random bytes as password) if there are none.
func loadOrCreateCredentials(dir string) (*Credentials, error) {
	path := filepath.Join(dir, CredentialsFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		var c Credentials
		if err := json.Unmarshal(data, &c); err != nil || c.User == "" || c.Password == "" {
			return nil, fmt.Errorf("%w: credentials file %s is damaged; remove it to generate new ones", ErrInvalidConfig, path)
		}
		c.File = path
		return &c, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("credentials: %w", err)
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	c := &Credentials{User: "rbee", Password: base64.RawURLEncoding.EncodeToString(b), File: path, Generated: true}
	data, _ = json.Marshal(c)
	// Written aside and renamed, so that a crash leaves no half file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("credentials: %w", err)
	}
	return c, nil
}

// passwordAuth admits the clients that present the generated credentials
// into the global account. It stands in for nats-server's own single-user
// authorization, which a server with a system account and the global account
// alone bypasses by adding an implicit no-auth user. Check may be called
// concurrently.
type passwordAuth struct{ user, password string }

func (a passwordAuth) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	if c.Kind() != server.CLIENT || o == nil {
		return false
	}
	userOK := subtle.ConstantTimeCompare([]byte(o.Username), []byte(a.user)) == 1
	passOK := subtle.ConstantTimeCompare([]byte(o.Password), []byte(a.password)) == 1
	if !userOK || !passOK {
		return false
	}
	c.RegisterUser(&server.User{Username: a.user})
	return true
}
