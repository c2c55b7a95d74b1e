package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func kvOn(t testing.TB, nc *nats.Conn, bucket string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func put(kv jetstream.KeyValue, key string, value []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := kv.Put(ctx, key, value)
	return err
}

// After the server takes JetStream down (as it does on a storage failure),
// EnsureJetStream brings it back with the buckets it held.
func TestRecoverJetStreamAfterShutdown(t *testing.T) {
	s := startServer(t, testConfig(t))
	if again, err := s.EnsureJetStream(); again || err != nil {
		t.Fatalf("EnsureJetStream with JetStream running = %v, %v", again, err)
	}
	nc := connect(t, s.ClientURL())
	kv := kvOn(t, nc, "rbee_workers")
	if err := put(kv, "hive-1.w1", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if err := s.NATS().ShutdownJetStream(); err != nil { // what nats-server does when the disk fails
		t.Fatal(err)
	}
	if s.JetStreamEnabled() {
		t.Fatal("JetStream still enabled")
	}
	if err := put(kv, "hive-1.w1", []byte("v2")); err == nil {
		t.Fatal("a write succeeded without JetStream")
	}
	checkFor(t, 10*time.Second, func() error {
		again, err := s.RecoverJetStream()
		if err == nil && !again {
			return errors.New("EnsureJetStream did nothing")
		}
		return err
	})
	checkFor(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		e, err := kv.Get(ctx, "hive-1.w1")
		if err != nil {
			return err
		}
		if string(e.Value()) != "v1" {
			return fmt.Errorf("value %q", e.Value())
		}
		return put(kv, "hive-1.w1", []byte("v3"))
	})
}

func TestEnsureJetStreamAfterShutdownOfServer(t *testing.T) {
	s := startServer(t, testConfig(t))
	s.Shutdown()
	if _, err := s.EnsureJetStream(); !errors.Is(err, ErrNoJetStream) {
		t.Fatalf("after Shutdown: %v, want ErrNoJetStream", err)
	}
}

// A full disk (a small tmpfs) makes the bucket's stream fail its writes;
// once space is free again, RecoverJetStream (a RestartJetStream) brings it back and writes
// succeed, without a restart of the server. It needs root to mount the tmpfs.
func TestRecoverJetStreamAfterFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })

	c := testConfig(t)
	c.StoreDir = filepath.Join(dir, "data")
	s := startServer(t, c)
	nc := connect(t, s.ClientURL())
	kv := kvOn(t, nc, "rbee_workers")
	if err := put(kv, "keep", []byte("v")); err != nil {
		t.Fatal(err)
	}
	// Fill the disk beside the store, then write until the store fails.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	_ = f.Close()
	value := []byte(strings.Repeat("x", 16<<10))
	i := 0
	checkFor(t, 30*time.Second, func() error {
		i++
		if err := put(kv, fmt.Sprintf("k%d", i%8), value); err != nil {
			return nil
		}
		return fmt.Errorf("write %d accepted on a full disk", i)
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, func() error {
		if err := put(kv, "after", []byte("v")); err == nil {
			return nil
		}
		if !s.StoreFailed() {
			return errors.New("StoreFailed is false while writes fail")
		}
		if _, err := s.RecoverJetStream(); err != nil {
			return err
		}
		return put(kv, "after", []byte("v"))
	})
	if s.StoreFailed() {
		t.Fatal("StoreFailed after the recovery")
	}
	if again, err := s.RecoverJetStream(); again || err != nil {
		t.Fatalf("RecoverJetStream with nothing to recover = %v, %v", again, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if e, err := kv.Get(ctx, "keep"); err != nil || string(e.Value()) != "v" {
		t.Fatalf("entry from before the failure: %v, %v", e, err)
	}
}
