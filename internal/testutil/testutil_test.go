package testutil

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// fakeTB records a Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	panic(f) // stop the helper as runtime.Goexit would
}

func run(f *fakeTB, fn func()) {
	defer func() {
		if r := recover(); r != nil && r != f {
			panic(r)
		}
	}()
	fn()
}

func TestCheckForReportsLastError(t *testing.T) {
	f := &fakeTB{TB: t}
	n := 0
	run(f, func() {
		CheckFor(f, 30*time.Millisecond, time.Millisecond, func() error {
			n++
			return fmt.Errorf("attempt %d: want 3 keys", n)
		})
	})
	if !strings.Contains(f.failed, fmt.Sprintf("attempt %d: want 3 keys", n)) {
		t.Fatalf("failure %q does not carry the last error (attempt %d)", f.failed, n)
	}
}

func TestCheckForReturnsOnSuccess(t *testing.T) {
	f := &fakeTB{TB: t}
	n := 0
	run(f, func() {
		CheckFor(f, time.Minute, time.Millisecond, func() error {
			if n++; n < 3 {
				return errors.New("not yet")
			}
			return nil
		})
	})
	if f.failed != "" || n != 3 {
		t.Fatalf("failed %q after %d calls", f.failed, n)
	}
}

func TestRecv(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	if v := Recv(t, ch, time.Second, "value"); v != 7 {
		t.Fatalf("Recv = %d", v)
	}
	f := &fakeTB{TB: t}
	run(f, func() { Recv(f, make(chan int), 5*time.Millisecond, "beat") })
	if !strings.Contains(f.failed, "no beat") {
		t.Fatalf("failure %q", f.failed)
	}
}
