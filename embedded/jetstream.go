package embedded

import "fmt"

// EnsureJetStream turns JetStream back on, with the configuration it started
// with, if the server turned it off (nats-server disables JetStream after a
// storage failure in a cluster, out of space in its Raft log, or a permission
// error, and never re-enables it by itself; see RestartJetStream for a full
// disk on a single server).
// The streams and KV buckets in the store directory come back with it. It
// reports whether it re-enabled JetStream; with JetStream running it does
// nothing and returns false, nil.
//
// It returns an error wrapping ErrNoJetStream if the server was started
// without JetStream or has shut down, ErrJetStreamStopping while the server
// is still taking JetStream down, or nats-server's error if enabling failed
// (the store directory is still not writable). Call it again later then.
func (s *Server) EnsureJetStream() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down || s.js == nil {
		return false, fmt.Errorf("%w: server shut down or started without JetStream", ErrNoJetStream)
	}
	if s.srv.JetStreamEnabled() {
		return false, nil
	}
	// Disabled but not yet gone: the server's shutdown of JetStream still runs.
	if s.srv.JetStreamConfig() != nil {
		return false, ErrJetStreamStopping
	}
	cfg := *s.js // EnableJetStream rewrites the store path of what it is given
	if err := s.srv.EnableJetStream(&cfg); err != nil {
		return false, fmt.Errorf("re-enable jetstream: %w", err)
	}
	s.logger.Warn("jetstream re-enabled after the server had disabled it", "store", s.js.StoreDir)
	return true, nil
}

// RestartJetStream takes JetStream down and starts it again with its
// original configuration, reloading every stream and KV bucket from the store
// directory. It is the way back after a full disk on a single server, where
// nats-server keeps JetStream enabled but each stream that failed a write
// stays failed (every later write is refused or unanswered) until it is
// reloaded. Consumers and KV watchers are dropped and must be re-created
// (nats.go's ordered consumers and KV watchers do that by themselves).
//
// It returns an error wrapping ErrNoJetStream if the server was started
// without JetStream or has shut down, or nats-server's error if enabling
// failed; EnsureJetStream then retries the enabling.
func (s *Server) RestartJetStream() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down || s.js == nil {
		return fmt.Errorf("%w: server shut down or started without JetStream", ErrNoJetStream)
	}
	if s.srv.JetStreamConfig() != nil {
		if err := s.srv.ShutdownJetStream(); err != nil {
			return fmt.Errorf("stop jetstream: %w", err)
		}
	}
	cfg := *s.js
	if err := s.srv.EnableJetStream(&cfg); err != nil {
		return fmt.Errorf("restart jetstream: %w", err)
	}
	s.logger.Warn("jetstream restarted", "store", s.js.StoreDir)
	return nil
}

// StoreFailed reports whether nats-server has reported a failed store write
// (a full disk, a permission error) since the server started or JetStream was
// last restarted.
func (s *Server) StoreFailed() bool { return s.storeFailed.Load() }

// RecoverJetStream brings JetStream back after a storage failure: it
// re-enables JetStream if the server turned it off (EnsureJetStream), and
// restarts it if a store write failed since the last start
// (RestartJetStream). It reports whether it did either; with nothing to
// recover it returns false, nil. Call it while store writes fail, every few
// seconds: while the disk is still full the restart fails again, or its
// streams fail their next write, and a later call tries again.
//
// It returns ErrNoJetStream, ErrJetStreamStopping or nats-server's error as
// EnsureJetStream and RestartJetStream do.
func (s *Server) RecoverJetStream() (bool, error) {
	if again, err := s.EnsureJetStream(); again || err != nil {
		if again {
			s.storeFailed.Store(false)
		}
		return again, err
	}
	if !s.storeFailed.Load() {
		return false, nil
	}
	s.storeFailed.Store(false) // failures after the restart raise it again
	if err := s.RestartJetStream(); err != nil {
		s.storeFailed.Store(true)
		return false, err
	}
	return true, nil
}

// JetStreamEnabled reports whether the server's JetStream is running.
func (s *Server) JetStreamEnabled() bool { return s.srv.JetStreamEnabled() }
