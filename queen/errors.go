package queen

import "errors"

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New.
var ErrInvalidConfig = errors.New("invalid queen config")

// ErrStarted is returned by Start on a queen already started or stopped.
var ErrStarted = errors.New("queen already started")
