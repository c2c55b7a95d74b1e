package embedded

import "errors"

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New for a Config that cannot work.
var ErrInvalidConfig = errors.New("invalid embedded server config")

// ErrListen is returned (wrapped, with the listener's error) by New when the
// client address cannot be listened on, e.g. a port another process holds:
// a runtime condition, not a bad Config.
var ErrListen = errors.New("cannot listen")

// ErrNotReady is returned (wrapped) by New when the server did not accept connections in time.
var ErrNotReady = errors.New("embedded server not ready")

// ErrDataDirInUse is returned (wrapped) by New when another server, in this
// process or another, holds the store directory.
var ErrDataDirInUse = errors.New("data directory in use")

// ErrNoJetStream is returned (wrapped) by EnsureJetStream when the server was
// not configured with JetStream, or has shut down.
var ErrNoJetStream = errors.New("no jetstream to enable")

// ErrJetStreamStopping is returned (wrapped) by EnsureJetStream while the
// server is still taking JetStream down; try again shortly.
var ErrJetStreamStopping = errors.New("jetstream still shutting down")

// ErrNoAdvisories is returned (wrapped) by AdvisoriesReachable when the
// server sends the client no connection advisories for its account.
var ErrNoAdvisories = errors.New("no connection advisories")
