package hoststats

import "errors"

// ErrInvalidConfig is returned (wrapped) by Config.Validate and NewSampler.
var ErrInvalidConfig = errors.New("invalid hoststats config")

// ErrAlreadyStarted is returned by Start when the Sampler is already running.
var ErrAlreadyStarted = errors.New("hoststats sampler already started")

// ErrStopped is returned by Start after Stop.
var ErrStopped = errors.New("hoststats sampler stopped")
