package worker

import "errors"

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New, and by
// setters given values outside the contract.
var ErrInvalidConfig = errors.New("invalid worker config")

// ErrNotRunning is returned (wrapped) by Restart and Exited when the worker
// is not started, or already stopped.
var ErrNotRunning = errors.New("worker not running")

// ErrProgressBackwards is returned (wrapped) by SetProgress for a value below
// the current one: progress only grows within an instance (see Restart).
var ErrProgressBackwards = errors.New("progress went backwards")
