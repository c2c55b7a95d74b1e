package auth

import "errors"

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New.
var ErrInvalidConfig = errors.New("invalid auth config")

// ErrRevoked is returned (wrapped) by Service.Check for a token of a revoked
// identity, issued at or before its revocation.
var ErrRevoked = errors.New("token revoked")

// ErrAlreadyStarted is returned by Service.Start when called twice.
var ErrAlreadyStarted = errors.New("auth service already started")

// ErrNotStarted is returned (wrapped) by Service.Check before Start has
// read the revocation list.
var ErrNotStarted = errors.New("auth service not started")
