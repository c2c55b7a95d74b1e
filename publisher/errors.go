package publisher

import (
	"errors"
	"fmt"

	"github.com/rbee/heartbeat/lifecycle"
)

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New.
var ErrInvalidConfig = errors.New("invalid publisher config")

// ErrNotStarted is returned by Stop when Start was never called.
var ErrNotStarted = errors.New("publisher not started")

// ErrStopped is returned by Start after Stop; it wraps lifecycle.ErrStarted.
var ErrStopped = fmt.Errorf("publisher stopped: %w", lifecycle.ErrStarted)
