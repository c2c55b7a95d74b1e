package token

import "errors"

// ErrMalformed is returned (wrapped) for a string that is not a token of
// this format: wrong prefix, role, field count, ID, time or MAC length.
var ErrMalformed = errors.New("malformed token")

// ErrForged is returned (wrapped) for a well-formed token whose MAC does not
// match the secret: forged, altered, or minted under another queen's secret.
var ErrForged = errors.New("token not issued under this secret")

// ErrRole is returned (wrapped) by Derive for a token that cannot derive the
// requested one (only a hive token derives worker tokens).
var ErrRole = errors.New("token of the wrong role")

// ErrBadSecret is returned (wrapped) by LoadSecret for a missing, short or
// damaged secret file.
var ErrBadSecret = errors.New("bad secret")
