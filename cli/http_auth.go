package cli

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/rbee/heartbeat/auth"
	"github.com/rbee/heartbeat/token"
)

// httpSecurity is how the queen's HTTP API admits requests: with check set
// (an API beyond loopback), every path but /healthz needs a bearer token
// that check accepts; with a certificate it serves TLS.
type httpSecurity struct {
	check             func(tok string) (token.Claims, error)
	certFile, keyFile string
}

// parseTLSPair reads --http-tls CERT,KEY; "" is no TLS.
func parseTLSPair(v string) (cert, key string, err error) {
	if v == "" {
		return "", "", nil
	}
	cert, key, ok := strings.Cut(v, ",")
	if !ok || cert == "" || key == "" {
		return "", "", usagef("--http-tls %q: want CERT,KEY", v)
	}
	if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
		return "", "", usagef("--http-tls: %v", err)
	}
	return cert, key, nil
}

// wrap returns h behind the bearer check. A missing, malformed, forged or
// revoked token gets 401; a token of a role that may not read (a hive's or
// a worker's) gets 403. Every refusal is counted by check's service.
func (s httpSecurity) wrap(h http.Handler) http.Handler {
	if s.check == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			h.ServeHTTP(w, r)
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		c, err := s.check(strings.TrimSpace(tok))
		switch {
		case !ok || err != nil:
			msg := "a bearer token is required (rbee token viewer NAME)"
			if ok && errors.Is(err, auth.ErrRevoked) {
				msg = "token revoked"
			} else if ok {
				msg = "token refused"
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="rbee"`)
			httpAuthError(w, http.StatusUnauthorized, msg)
		case c.Role != token.RoleViewer:
			httpAuthError(w, http.StatusForbidden, "a "+string(c.Role)+" token may not read the API; use a viewer token")
		default:
			h.ServeHTTP(w, r)
		}
	})
}

func httpAuthError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
