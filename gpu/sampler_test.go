package gpu

import (
	"context"
	"errors"
	"log/slog"
	"testing"
)

// TestNewOnThisMachine runs the real constructor. Without the NVML library
// (CI, most development machines) it must degrade to no GPU data without an
// error, a panic or a log line per sample (NVML Init is tried again at each
// sample, and its unchanged failure is not logged again); with GPUs it must report them.
func TestNewOnThisMachine(t *testing.T) {
	rec, logger := newRecorder(t)
	s := New(logger)
	ctx := context.Background()

	first, err := s.Sample(ctx)
	if err != nil {
		t.Fatalf("Sample: %v", err)
	}
	if first == nil {
		t.Fatal("Sample returned nil, want a non-nil slice")
	}
	logged := len(rec.messages())
	second, err := s.Sample(ctx)
	if err != nil {
		t.Fatalf("second Sample: %v", err)
	}
	if len(second) != len(first) {
		t.Errorf("second Sample has %d GPUs, first had %d", len(second), len(first))
	}
	if len(first) == 0 {
		if logged != 1 || len(rec.messages()) != 1 || rec.count(slog.LevelInfo)+rec.count(slog.LevelDebug) != 1 {
			t.Errorf("logs = %q, want one info (no library) or debug line for the first sample only", rec.messages())
		}
		t.Logf("no GPU data here: %q", rec.messages())
	}
	for _, g := range first {
		t.Logf("gpu %d %s %s health=%s %s", g.Index, g.UUID, g.Name, g.Health, g.HealthReason)
		if g.UUID == "" || g.Name == "" {
			t.Errorf("gpu %d: uuid %q name %q, want both", g.Index, g.UUID, g.Name)
		}
	}

	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Sample(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Sample after Close: err = %v, want ErrClosed", err)
	}
}

func TestNewNilLogger(t *testing.T) {
	s := New(nil)
	t.Cleanup(func() { _ = s.Close() })
	if _, err := s.Sample(context.Background()); err != nil {
		t.Fatalf("Sample: %v", err)
	}
}
