package queen

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/internal/testutil"
)

func TestVersionAtLeast(t *testing.T) {
	tests := []struct {
		v    string
		want bool
	}{
		{"2.11.0", true}, {"2.15.2", true}, {"v2.12.1-beta", true}, {"2.9.25", false}, {"2.10.99", false}, {"3.0.0", true},
	}
	for _, tt := range tests {
		t.Run(tt.v, func(t *testing.T) {
			if got := versionAtLeast(tt.v, MinServerVersion); got != tt.want {
				t.Fatalf("versionAtLeast(%q) = %v, want %v", tt.v, got, tt.want)
			}
		})
	}
	if err := CheckServerVersion("2.9.25"); err == nil {
		t.Fatal("2.9 accepted")
	}
}

// CreateBucket makes the stream nats.go's KV API would make, but in async
// persist mode; it keeps an existing bucket's mode when it updates it, and
// refuses replicas for an async bucket.
func TestCreateBucket(t *testing.T) {
	srv := testutil.Server(t)
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	streamCfg := func(bucket string) jetstream.StreamConfig {
		t.Helper()
		st, err := js.Stream(ctx, bucketStreamPrefix+bucket)
		if err != nil {
			t.Fatal(err)
		}
		c := st.CachedInfo().Config
		c.Name, c.Subjects, c.Metadata = "", nil, nil // the server's API level differs with the mode
		return c
	}

	// What the KV API makes, and what CreateBucket makes: the same but the mode.
	if _, err := js.CreateKeyValue(ctx, BucketConfig("by_kv", time.Hour, 1)); err != nil {
		t.Fatal(err)
	}
	kv, err := CreateBucket(ctx, js, BucketConfig("ours", time.Hour, 1))
	if err != nil {
		t.Fatal(err)
	}
	byKV, ours := streamCfg("by_kv"), streamCfg("ours")
	if ours.PersistMode != jetstream.AsyncPersistMode {
		t.Fatalf("persist mode %v, want async", ours.PersistMode)
	}
	ours.PersistMode = byKV.PersistMode
	if !reflect.DeepEqual(byKV, ours) {
		t.Fatalf("stream configs differ beyond the persist mode:\nKV API: %+v\nours:   %+v", byKV, ours)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != time.Hour || st.LimitMarkerTTL() != MarkerTTL || st.History() != 1 {
		t.Fatalf("bucket status: age limit %s, marker TTL %s, history %d", st.TTL(), st.LimitMarkerTTL(), st.History())
	}

	// An update keeps the mode, default or async.
	if _, err := CreateBucket(ctx, js, BucketConfig("by_kv", 2*time.Hour, 1)); err != nil {
		t.Fatal(err)
	}
	if c := streamCfg("by_kv"); c.PersistMode != jetstream.DefaultPersistMode || c.MaxAge != 2*time.Hour {
		t.Fatalf("updated bucket of the KV API: mode %v, age limit %s", c.PersistMode, c.MaxAge)
	}
	if _, err := CreateBucket(ctx, js, BucketConfig("ours", 2*time.Hour, 1)); err != nil {
		t.Fatal(err)
	}
	if c := streamCfg("ours"); c.PersistMode != jetstream.AsyncPersistMode || c.MaxAge != 2*time.Hour {
		t.Fatalf("updated async bucket: mode %v, age limit %s", c.PersistMode, c.MaxAge)
	}

	// Replicas for an async bucket: refused with what to do, the bucket unchanged.
	_, err = CreateBucket(ctx, js, BucketConfig("ours", 2*time.Hour, 3))
	if !errors.Is(err, ErrBucketUnreplicable) {
		t.Fatalf("replicas for an async bucket: %v, want ErrBucketUnreplicable", err)
	}
	t.Log(err)
	if c := streamCfg("ours"); c.Replicas != 1 || c.PersistMode != jetstream.AsyncPersistMode {
		t.Fatalf("after the refusal: replicas %d, mode %v", c.Replicas, c.PersistMode)
	}
}
