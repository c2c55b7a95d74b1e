package cli

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rbee/heartbeat/internal/testutil"
)

// TestErrorsSayWhatToDo: the tools' errors from a server without JetStream
// (NATS' bare "no responders available") and from no server at all say
// what to do, in one line.
func TestErrorsSayWhatToDo(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(s.Shutdown)
	down := testutil.FreePorts(t, 1)[0]
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"status without jetstream", []string{"status", "--nats-url", s.ClientURL()}, "JetStream is not enabled there. Enable it"},
		{"check without jetstream", []string{"check", "hive", "h1", "--nats-url", s.ClientURL()}, "JetStream is not enabled there"},
		{"events without jetstream", []string{"events", "--nats-url", s.ClientURL()}, "JetStream is not enabled there"},
		{"no server", []string{"status", "--nats-url", "nats://127.0.0.1:" + itoa(down)}, "start rbee queen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			code, out, stderr := run(t, ctx, "", tt.args...)
			if code != 1 || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") != 1 {
				t.Fatalf("exit %d, stderr %q (stdout %q); want 1 with %q on one line", code, stderr, out, tt.want)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
