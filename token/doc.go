// Package token mints and verifies rbee's agent credentials without any
// store: a credential is an HMAC under the queen's secret, so every queen
// holding the same secret verifies it alike and none keeps a list of issued
// ones.
//
// A hive token is HMAC(secret, hive ID, issue time). A worker token is an
// HMAC keyed by its hive token's MAC, so a hive derives its own workers'
// tokens from its token alone (no round trip to a queen) and cannot derive
// another hive's. A viewer token reads the registry and the HTTP API.
//
// Tokens carry their issue time in milliseconds: revoking an identity records
// a time, and every token of that identity issued at or before it is refused
// (a worker token carries its hive token's time, so revoking a hive revokes
// its workers). Re-enrolling after a revocation mints a later token.
//
// The package is pure: no I/O but the secret file, no logging. Tokens are
// secrets; nothing here formats one into an error.
package token
