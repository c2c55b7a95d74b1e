package engine

import "errors"

// ErrInvalidConfig is returned (wrapped) by Config.Validate, NewProber,
// Preset and StartProcess for settings that cannot work.
var ErrInvalidConfig = errors.New("invalid engine config")

// ErrProbe is wrapped by the error of a probe that did not get an answer it
// could use: connection refused, a timeout, an HTTP error status, an
// unparsable /metrics.
var ErrProbe = errors.New("engine probe")
