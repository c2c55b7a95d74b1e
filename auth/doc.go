// Package auth serves nats-server's auth callout for rbee: it admits the
// holders of tokens minted under the queen's secret (package token), each
// limited to its role's subjects, refuses revoked, forged and malformed
// ones, and ends the live connections of an identity when it is revoked.
//
// One Service runs in every queen. The callout subscription is a queue
// group, so each connection attempt is answered by one queen; every queen
// holds the same secret and watches the same revocation bucket, so they all
// answer alike. The same Service serves the queen's embedded broker and an
// external nats-server whose configuration names the callout (Broker returns
// what that configuration needs).
package auth
