package registry

import "errors"

// ErrNoOnChange is returned by WatchKV when KVWatchConfig.OnChange is nil.
var ErrNoOnChange = errors.New("registry: KVWatchConfig.OnChange is required")
