// Package embedded runs a nats-server with JetStream inside the process, so
// that one command is a working rbee system. It listens on loopback by
// default, keeps its JetStream data in its own store directory, sets explicit
// memory and storage limits, never installs signal handlers (the process owns
// them) and writes its log through log/slog.
//
// The same server can join a cluster (routes) and read a standard
// nats-server configuration file for authentication, permissions and TLS.
package embedded
