// Package embedded runs a nats-server with JetStream inside the process, so
// that one command is a working rbee system. It listens on loopback by
// default, keeps its JetStream data in its own store directory (locked: one
// server per directory), sets explicit memory and storage limits, never
// installs signal handlers (the process owns them) and writes its log through
// log/slog, nats-server's notices at debug.
//
// Its clients, without credentials, can subscribe to their own account's
// connection advisories (AdvisorySubjects(Account)), and a frozen client is
// dropped within seconds (Config.PingInterval, Config.WriteDeadline), so that
// a subscriber learns of a crashed or frozen sender long before its beats
// expire. Beyond loopback it admits only the queens' own user and asks the
// queens' auth callout about every other client (Callout, package auth).
// After a storage failure, EnsureJetStream and RestartJetStream bring
// JetStream back without a restart.
//
// The same server can join a cluster (routes) and read a standard
// nats-server configuration file for authentication, permissions and TLS.
//
// Server keeps the lifecycle contract of package lifecycle in its own shape:
// New starts it, Shutdown is safe twice and concurrently, and every accessor
// may race Shutdown.
package embedded
