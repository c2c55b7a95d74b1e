package fleet

import "errors"

// ErrInvalidConfig is wrapped by Config.Validate when a Config cannot work.
var ErrInvalidConfig = errors.New("fleet: invalid config")
