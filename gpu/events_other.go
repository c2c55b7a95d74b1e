//go:build !(linux && cgo && nvml)

package gpu

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/rbee/heartbeat/lifecycle"
)

// Events reports no GPU events: NVML is reachable only from linux builds
// with cgo. Its methods may be called concurrently.
type Events struct {
	events
	logger *slog.Logger

	mu      sync.Mutex
	started bool
	stopped bool
}

// NewEvents returns an Events that never reports an event. A nil logger discards.
func NewEvents(logger *slog.Logger, _ func(Event)) *Events {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Events{logger: logger.With("component", "gpu-events")}
}

// Supported returns false.
func (e *Events) Supported() bool { return false }

// Start says once at debug level that GPU faults are seen by polling only
// and returns nil; a second Start, or Start after Stop, returns an error
// wrapping lifecycle.ErrStarted.
func (e *Events) Start(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started || e.stopped {
		return fmt.Errorf("gpu events: %w", lifecycle.ErrStarted)
	}
	e.started = true
	e.logger.Debug("gpu events need a linux build with cgo, gpu faults seen by polling only")
	return nil
}

// Stop is safe before Start and more than once.
func (e *Events) Stop() {
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
}
