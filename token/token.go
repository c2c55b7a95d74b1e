package token

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rbee/heartbeat/subjects"
)

// Version is the first field of every token; it changes with the format.
const Version = "rbee1"

// Role is what an identity may do.
type Role string

// The roles a token can carry.
const (
	RoleHive   Role = "hive"
	RoleWorker Role = "worker"
	RoleViewer Role = "viewer"
)

// SecretSize is the length of a queen secret in bytes.
const SecretSize = 32

// Secret is a queen's signing secret. Every queen of one fleet holds the same.
type Secret [SecretSize]byte

// NewSecret returns a secret from crypto/rand.
func NewSecret() (Secret, error) {
	var s Secret
	_, err := rand.Read(s[:])
	return s, err
}

// SecretFile is the name of the secret's file in a queen's data directory.
const SecretFile = "queen-secret"

// LoadSecret reads a secret file (base64 of SecretSize bytes). It returns an
// error wrapping ErrBadSecret if the file is damaged, or fs.ErrNotExist.
func LoadSecret(path string) (Secret, error) {
	var s Secret
	data, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("secret: %w", err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(raw) != SecretSize {
		return s, fmt.Errorf("%w: %s is not %d base64 bytes", ErrBadSecret, path, SecretSize)
	}
	copy(s[:], raw)
	return s, nil
}

// LoadOrCreateSecret reads the secret at path, or creates it (mode 0600,
// written aside and renamed) if there is none. created reports the latter.
func LoadOrCreateSecret(path string) (s Secret, created bool, err error) {
	s, err = LoadSecret(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return s, false, err
	}
	if s, err = NewSecret(); err != nil {
		return s, false, fmt.Errorf("secret: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return s, false, fmt.Errorf("secret: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(base64.RawURLEncoding.EncodeToString(s[:])+"\n"), 0o600); err != nil {
		return s, false, fmt.Errorf("secret: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return s, false, fmt.Errorf("secret: %w", err)
	}
	return s, true, nil
}

// Derived returns a key for purpose derived from the secret (the broker's
// own password, the callout issuer's seed), so that one secret file is all a
// queen keeps.
func (s Secret) Derived(purpose string) []byte {
	return mac(s[:], Version+" derive "+purpose)
}

// Claims is what a token says about its holder.
type Claims struct {
	Role Role
	// Hive is the hive ID (hive and worker tokens).
	Hive string
	// Worker is the worker ID (worker tokens).
	Worker string
	// Name is the viewer's name (viewer tokens).
	Name string
	// Issued is when the token (for a worker: its hive's token) was minted,
	// to the millisecond.
	Issued time.Time
}

// Identity returns the claims' identity as the broker shows it, e.g.
// "hive:gpu-node-1", "worker:gpu-node-1.llama-0", "viewer:grafana". It is no
// secret: it goes in logs and connection listings.
func (c Claims) Identity() string {
	switch c.Role {
	case RoleWorker:
		return string(c.Role) + ":" + subjects.WorkerKey(c.Hive, c.Worker)
	case RoleViewer:
		return string(c.Role) + ":" + c.Name
	default:
		return string(c.Role) + ":" + c.Hive
	}
}

// Subject returns the identity revocation is recorded under: the hive for
// hive and worker tokens ("hive.<id>"), the viewer for viewer tokens
// ("viewer.<name>").
func (c Claims) Subject() string {
	if c.Role == RoleViewer {
		return "viewer." + c.Name
	}
	return "hive." + c.Hive
}

const macLen = sha256.Size

func mac(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

func enc(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (s Secret) hiveMAC(hiveID, issued string) []byte {
	return mac(s[:], Version+" hive "+hiveID+" "+issued)
}

func workerMAC(hiveMAC []byte, workerID string) []byte {
	return mac(hiveMAC, Version+" worker "+workerID)
}

// Hive returns the token of hive hiveID issued at issued, or an error
// wrapping ErrMalformed for an invalid ID.
func (s Secret) Hive(hiveID string, issued time.Time) (string, error) {
	if !subjects.ValidID(hiveID) {
		return "", fmt.Errorf("%w: hive ID %q", ErrMalformed, hiveID)
	}
	at := ms(issued)
	return strings.Join([]string{Version, string(RoleHive), hiveID, at, enc(s.hiveMAC(hiveID, at))}, "."), nil
}

// Viewer returns a read-only token named name issued at issued, or an error
// wrapping ErrMalformed for an invalid name.
func (s Secret) Viewer(name string, issued time.Time) (string, error) {
	if !subjects.ValidID(name) {
		return "", fmt.Errorf("%w: viewer name %q", ErrMalformed, name)
	}
	at := ms(issued)
	return strings.Join([]string{Version, string(RoleViewer), name, at, enc(mac(s[:], Version+" viewer "+name+" "+at))}, "."), nil
}

// Derive returns the token of worker workerID of the hive whose token is
// hiveToken: no secret is needed, only the hive's token. It returns an error
// wrapping ErrMalformed or ErrRole.
func Derive(hiveToken, workerID string) (string, error) {
	c, m, err := parse(hiveToken)
	if err != nil {
		return "", err
	}
	if c.Role != RoleHive {
		return "", fmt.Errorf("%w: a %s token derives no worker token", ErrRole, c.Role)
	}
	if !subjects.ValidID(workerID) {
		return "", fmt.Errorf("%w: worker ID %q", ErrMalformed, workerID)
	}
	return strings.Join([]string{Version, string(RoleWorker), c.Hive, workerID, ms(c.Issued), enc(workerMAC(m, workerID))}, "."), nil
}

// Parse returns what tok claims, without checking its MAC: for a holder to
// learn its own identity. It returns an error wrapping ErrMalformed.
func Parse(tok string) (Claims, error) {
	c, _, err := parse(tok)
	return c, err
}

func parse(tok string) (Claims, []byte, error) {
	f := strings.Split(strings.TrimSpace(tok), ".")
	bad := func(why string) (Claims, []byte, error) {
		return Claims{}, nil, fmt.Errorf("%w: %s", ErrMalformed, why)
	}
	if len(f) < 5 || f[0] != Version {
		return bad("not an " + Version + " token")
	}
	var c Claims
	c.Role = Role(f[1])
	var ids []string
	switch c.Role {
	case RoleHive:
		if len(f) != 5 {
			return bad("field count")
		}
		c.Hive, ids = f[2], f[2:3]
	case RoleViewer:
		if len(f) != 5 {
			return bad("field count")
		}
		c.Name, ids = f[2], f[2:3]
	case RoleWorker:
		if len(f) != 6 {
			return bad("field count")
		}
		c.Hive, c.Worker, ids = f[2], f[3], f[2:4]
	default:
		return bad("unknown role")
	}
	for _, id := range ids {
		if !subjects.ValidID(id) {
			return bad("invalid ID")
		}
	}
	at, m := f[len(f)-2], f[len(f)-1]
	n, err := strconv.ParseInt(at, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != at {
		return bad("issue time")
	}
	c.Issued = time.UnixMilli(n)
	// Strict: one MAC has one spelling, so a token is a single string.
	raw, err := base64.RawURLEncoding.Strict().DecodeString(m)
	if err != nil || len(raw) != macLen {
		return bad("MAC")
	}
	return c, raw, nil
}

// Verify returns the claims of tok if the secret minted it (or, for a worker
// token, minted its hive's token). It returns an error wrapping ErrMalformed
// or ErrForged. Verify may be called concurrently.
func (s Secret) Verify(tok string) (Claims, error) {
	c, got, err := parse(tok)
	if err != nil {
		return Claims{}, err
	}
	at := ms(c.Issued)
	var want []byte
	switch c.Role {
	case RoleHive:
		want = s.hiveMAC(c.Hive, at)
	case RoleWorker:
		want = workerMAC(s.hiveMAC(c.Hive, at), c.Worker)
	case RoleViewer:
		want = mac(s[:], Version+" viewer "+c.Name+" "+at)
	}
	if !hmac.Equal(got, want) {
		return Claims{}, fmt.Errorf("%w: %s", ErrForged, c.Identity())
	}
	return c, nil
}
