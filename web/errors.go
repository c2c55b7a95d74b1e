package web

import "errors"

// ErrInvalidConfig is returned (wrapped) by New and Config.Validate for a
// Config that cannot work.
var ErrInvalidConfig = errors.New("invalid web view config")

// ErrNotRunning is returned (wrapped) to a page that connects to a View that
// is not started, or is stopped.
var ErrNotRunning = errors.New("web view not running")
