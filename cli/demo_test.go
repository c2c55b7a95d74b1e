package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
)

// TestDemoAgainstServer runs the demo on an existing server with --nats-url
// and --prefix: its buckets appear there, under that prefix, and it says
// where its web view is.
func TestDemoAgainstServer(t *testing.T) {
	srv := testutil.Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code, out, stderr := run(t, ctx, "", "demo", "--nats-url", srv.ClientURL(), "--prefix", "dm", "--interval", "400ms", "--http", "127.0.0.1:0")
	if code != 0 {
		t.Fatalf("exit %d:\n%s\n%s", code, out, stderr)
	}
	if !strings.Contains(out, "existing server "+srv.ClientURL()) || !strings.Contains(out, "prefix dm") || !strings.Contains(out, "expired") || !strings.Contains(out, "left") || !strings.Contains(out, "web view: http://127.0.0.1:") {
		t.Fatalf("demo output:\n%s", out)
	}
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"dm_workers", "dm_hives"} {
		if _, err := js.KeyValue(ctx, b); err != nil {
			t.Fatalf("bucket %s on the given server: %v", b, err)
		}
	}
	if _, err := js.KeyValue(ctx, "rbee_workers"); err == nil {
		t.Fatal("the demo wrote the default registry, not its prefix")
	}
}

// TestDemoFlags: the connection flags are used, not ignored.
func TestDemoFlags(t *testing.T) {
	srv := testutil.Server(t)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"creds used", []string{"--nats-url", srv.ClientURL(), "--creds", "/nonexistent/demo.creds"}, 1, "demo.creds"},
		{"tls ca used", []string{"--nats-url", srv.ClientURL(), "--tls-ca", "/nonexistent/ca.pem"}, 1, "ca.pem"},
		{"creds without server", []string{"--creds", "/x.creds"}, 2, "give --nats-url"},
		{"listen with server", []string{"--nats-url", srv.ClientURL(), "--listen", "127.0.0.1:1"}, 2, "--listen"},
		{"bad prefix", []string{"--prefix", "a.b"}, 2, "invalid prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NATS_URL", "")
			code, out, stderr := run(t, context.Background(), "", append([]string{"demo", "--interval", "100ms"}, tt.args...)...)
			if code != tt.code || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q (stdout %q); want %d with %q", code, stderr, out, tt.code, tt.want)
			}
		})
	}
}
