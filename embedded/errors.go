package embedded

import "errors"

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New for a Config that cannot work.
var ErrInvalidConfig = errors.New("invalid embedded server config")

// ErrNotReady is returned (wrapped) by New when the server did not accept connections in time.
var ErrNotReady = errors.New("embedded server not ready")
