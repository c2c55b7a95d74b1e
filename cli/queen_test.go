package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
)

// TestTwoQueensOneDataDir: a second queen on a data directory another one
// uses is refused with a clear message, and the first runs on.
func TestTwoQueensOneDataDir(t *testing.T) {
	dir := t.TempDir()
	ports := testutil.FreePorts(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var first testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"queen", "--data", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]), "--http", "off"},
			strings.NewReader(""), &first, &first)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(first.String(), "accepting heartbeats") {
		select {
		case code := <-done:
			t.Fatalf("first queen exited %d: %s", code, first.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("first queen not up: %s", first.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	code, _, stderr := run(t, sctx, "", "queen", "--data", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", ports[1]), "--http", "off")
	if code == 0 || !strings.Contains(stderr, "data directory in use") {
		t.Fatalf("second queen on the same data: exit %d, stderr %q", code, stderr)
	}
	select {
	case code := <-done:
		t.Fatalf("the first queen exited %d when the second was refused: %s", code, first.String())
	default:
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("first queen exit %d on stop: %s", code, first.String())
	}
}
