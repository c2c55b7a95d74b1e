package gpu

import (
	"context"
	"log/slog"
	"sync"
	"testing"
)

// logRecorder is a slog.Handler that keeps every record, for asserting what
// was logged and how often.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}

// count returns how many records at level were logged.
func (r *logRecorder) count(level slog.Level) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Level == level {
			n++
		}
	}
	return n
}

// messages returns every logged message, in order.
func (r *logRecorder) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.recs))
	for i, rec := range r.recs {
		out[i] = rec.Message
	}
	return out
}

func newRecorder(t *testing.T) (*logRecorder, *slog.Logger) {
	t.Helper()
	r := &logRecorder{}
	return r, slog.New(r)
}
