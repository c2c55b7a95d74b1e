package gpu

import "errors"

// ErrNVML is wrapped by errors that come from an NVML call; the message names
// the call and NVML's own description of the failure.
var ErrNVML = errors.New("nvml")

// ErrClosed is returned by Sample after Close.
var ErrClosed = errors.New("gpu sampler closed")
