package natsconn

import (
	"errors"
	"testing"
)

// One authentication at a time: a token, a user, a creds file or an nkey.
func TestOptionsOneAuthentication(t *testing.T) {
	for _, tt := range []struct {
		name string
		c    Config
		ok   bool
	}{
		{"none", Config{}, true},
		{"token", Config{Token: "t"}, true},
		{"user", Config{User: "u", Password: "p"}, true},
		{"token and user", Config{Token: "t", User: "u"}, false},
		{"token and creds", Config{Token: "t", CredsFile: "c"}, false},
		{"creds and nkey", Config{CredsFile: "c", NKeyFile: "n"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.c.URL = "nats://127.0.0.1:4222"
			_, err := tt.c.Options()
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
				t.Fatalf("Options = %v, want ok %v", err, tt.ok)
			}
		})
	}
}
