package queen

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
)

// oldBucket creates rbee_workers as the older scheme did (one TTL as its age
// limit, no per-entry TTLs) with maxValue as its value size limit (-1: none),
// and fills it with one entry per value, keyed h.w<n>, pipelined.
func oldBucket(t *testing.T, js jetstream.JetStream, oldTTL time.Duration, maxValue int32, values ...[]byte) {
	t.Helper()
	ctx := t.Context()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "rbee_workers", History: 1, TTL: oldTTL,
		LimitMarkerTTL: MarkerTTL, MaxValueSize: maxValue, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	for i, v := range values {
		if _, err := js.PublishAsync(fmt.Sprintf("$KV.rbee_workers.h.w%05d", i), v); err != nil {
			t.Fatal(err)
		}
		if i%4096 == 4095 {
			waitAcks(t, js)
		}
	}
	waitAcks(t, js)
}

func waitAcks(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		t.Fatalf("%d puts still unacknowledged after a minute", js.PublishAsyncPending())
	}
}

// lastPerKey reads the last message of every key of rbee_workers (headers
// only) and returns how many carry a Nats-TTL and how many do not, naming
// up to five of those. An ordered consumer that resets under load may
// deliver a key twice: the last message read for a key counts.
func lastPerKey(t *testing.T, js jetstream.JetStream) (withTTL, without int, examples []string) {
	t.Helper()
	ctx := t.Context()
	c, err := js.OrderedConsumer(ctx, "KV_rbee_workers", jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, HeadersOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ttl := map[string]bool{}
	for pending := uint64(1); pending > 0; {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			// A server's marker carries a Nats-TTL too: an entry counts only as a value.
			ttl[m.Subject()] = m.Headers().Get(jetstream.MsgTTLHeader) != "" && m.Headers().Get(jetstream.MarkerReasonHeader) == ""
			md, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			pending = md.NumPending
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("no messages with %d pending", pending)
		}
	}
	for subj, ok := range ttl {
		if ok {
			withTTL++
		} else {
			without++
			if len(examples) < 5 {
				examples = append(examples, subj)
			}
		}
	}
	return withTTL, without, examples
}

// TestMigrate50000: a queen starting on an older-scheme bucket of 50,000
// entries migrates every one of them (each gets the TTL it had left), under
// the migration's own deadline, not a bucket request's, and counts them.
func TestMigrate50000(t *testing.T) {
	const n = 50_000
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	values := make([][]byte, n)
	for i := range values {
		values[i] = []byte(fmt.Sprintf("entry %d", i))
	}
	// Old TTL and ceiling long enough that nothing expires during the test.
	oldBucket(t, js, 30*time.Minute, -1, values...)
	cfg := testConfig(t)
	cfg.MaxTTL = time.Hour
	q := startTestQueen(t, srv.ClientURL(), cfg) // migrates before it returns
	counted := func(result string) int {
		return int(value(q.metrics.migrated.WithLabelValues("rbee_workers", result)))
	}
	if got := counted(migrateRewritten); got != n || counted(migrateFailed) != 0 {
		t.Fatalf("migrated: rewritten %d, failed %d, superseded %d, gone %d; want %d rewritten",
			got, counted(migrateFailed), counted(migrateSuperseded), counted(migrateGone), n)
	}
	withTTL, without, examples := lastPerKey(t, js)
	if withTTL != n || without != 0 {
		t.Fatalf("%d entries with a Nats-TTL, %d without (%v), want all %d", withTTL, without, examples, n)
	}
	m, err := lastMsg(js, "rbee_workers", "h.w00000")
	if err != nil {
		t.Fatal(err)
	}
	if ttl, err := time.ParseDuration(m.Header.Get(jetstream.MsgTTLHeader)); err != nil || ttl <= 0 || ttl > 30*time.Minute {
		t.Fatalf("h.w00000 has Nats-TTL %q, want what was left of its 30m", m.Header.Get(jetstream.MsgTTLHeader))
	}
}

// TestMigrateCountsFailures: entries the server refuses to rewrite (here
// the bucket's value size limit, which the rewrite's headers pass) are tried
// again, then counted as failed and logged by key; nothing is skipped
// silently, and the others are migrated.
func TestMigrateCountsFailures(t *testing.T) {
	srv := testutil.Server(t)
	nc := testutil.Connect(t, srv.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 400
	var values [][]byte
	for i := range 30 {
		size := 100 // fits with the rewrite's headers
		if i%3 == 0 {
			size = limit - 4 // fits alone, not with the headers
		}
		values = append(values, []byte(strings.Repeat("x", size)))
	}
	oldBucket(t, js, 30*time.Minute, limit, values...)

	var log testutil.Buffer
	cfg := testConfig(t)
	cfg.Logger = testutil.Logger(t)
	q, err := New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	q.log = slog.New(slog.NewTextHandler(&log, nil))
	if err := q.migrate(t.Context(), "rbee_workers", 30*time.Minute); err != nil {
		t.Fatal(err)
	}
	counted := func(result string) int {
		return int(value(q.metrics.migrated.WithLabelValues("rbee_workers", result)))
	}
	if counted(migrateRewritten) != 20 || counted(migrateFailed) != 10 {
		t.Fatalf("rewritten %d, failed %d; want 20, 10\n%s", counted(migrateRewritten), counted(migrateFailed), log.String())
	}
	for i := 0; i < 30; i += 3 {
		if key := fmt.Sprintf("h.w%05d", i); !strings.Contains(log.String(), key) {
			t.Errorf("failed entry %s not named in the log:\n%s", key, log.String())
		}
	}
	if !strings.Contains(log.String(), "bucket migration incomplete") {
		t.Errorf("no summary warning:\n%s", log.String())
	}
	withTTL, without, _ := lastPerKey(t, js)
	if withTTL != 20 || without != 10 {
		t.Fatalf("%d entries with a Nats-TTL, %d without; want 20, 10", withTTL, without)
	}
}
