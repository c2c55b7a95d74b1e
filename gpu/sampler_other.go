//go:build !(linux && cgo && nvml)

package gpu

import (
	"context"
	"log/slog"
	"sync"

	"github.com/rbee/heartbeat/wire"
)

// NVML reports whether this build reads GPUs through NVML: false here.
const NVML = false

// Sampler reports no GPU data: NVML is reachable only from linux builds
// with cgo and the nvml build tag. Its methods may be called concurrently.
type Sampler struct {
	logger *slog.Logger
	logged sync.Once

	mu     sync.Mutex
	closed bool
}

// New returns a Sampler that reports no GPU data. A nil logger discards.
func New(logger *slog.Logger) *Sampler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Sampler{logger: logger.With("component", "gpu")}
}

// Sample returns an empty, non-nil slice and no error; it returns ErrClosed
// after Close. The first call says once why there is no GPU data.
func (s *Sampler) Sample(context.Context) ([]wire.GPU, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return []wire.GPU{}, ErrClosed
	}
	s.logged.Do(func() {
		s.logger.Warn("no gpu data: this rbee is built without NVML; build it on linux with cgo and -tags nvml (docs/operations.md)")
	})
	return []wire.GPU{}, nil
}

// Close marks the Sampler closed. It is safe to call more than once and
// always returns nil.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// Processes returns nil: there is no GPU data in this build.
func (s *Sampler) Processes() []Process { return nil }
