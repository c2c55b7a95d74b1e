package queen

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
)

// TestBucketTTLChangeIsLogged: a second queen with another TTL takes the
// bucket over with its own TTL and says so at warn level; one with the same
// TTL says nothing.
func TestBucketTTLChangeIsLogged(t *testing.T) {
	srv := testutil.Server(t)
	startWith := func(ttl time.Duration) string {
		var log testutil.Buffer
		cfg := DefaultConfig()
		cfg.WorkerTTL, cfg.HiveTTL = ttl, time.Minute
		cfg.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelWarn}))
		q, err := New(testutil.Connect(t, srv.ClientURL()), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := q.Start(ctx); err != nil {
			t.Fatal(err)
		}
		q.Stop(ctx)
		return log.String()
	}
	if out := startWith(5 * time.Second); out != "" {
		t.Fatalf("first queen logged %q", out)
	}
	if out := startWith(5 * time.Second); out != "" {
		t.Fatalf("queen with the same TTL logged %q", out)
	}
	out := startWith(7 * time.Second)
	if !strings.Contains(out, "changing the bucket's TTL") || !strings.Contains(out, "from=5s to=7s") || !strings.Contains(out, "rbee_workers") {
		t.Fatalf("TTL change not logged: %q", out)
	}
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), "rbee_workers")
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 7*time.Second || st.LimitMarkerTTL() != 7*time.Second {
		t.Fatalf("bucket TTL %s marker %s, want 7s", st.TTL(), st.LimitMarkerTTL())
	}
}
