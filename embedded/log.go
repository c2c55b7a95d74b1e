package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
)

// slogLogger bridges the nats-server logger interface to slog. nats-server's
// notices (its start-up lines, the JetStream banner) go at debug: the
// embedding program says what matters itself. Warnings and errors stay, and
// so do the notices that report trouble (slow consumers). Its methods may be
// called concurrently.
type slogLogger struct {
	l *slog.Logger
	// storeFailed, if set, is raised when nats-server reports a failed
	// store write (see Server.StoreFailed).
	storeFailed *atomic.Bool
	// refusals, if set, counts the server's reports of refused clients
	// (see Server.Refusals).
	refusals *refusals
}

// refusals counts what the server refused: publishes and subscriptions
// beyond a client's permissions, and failed authentications.
type refusals struct {
	permission, authentication atomic.Uint64
}

func (r *refusals) count(format string, v []any) {
	msg := fmt.Sprintf(format, v...)
	switch {
	case strings.Contains(msg, "Publish Violation"), strings.Contains(msg, "Subscription Violation"):
		r.permission.Add(1)
	case strings.Contains(msg, "authentication error"):
		r.authentication.Add(1)
	}
}

func (s slogLogger) log(level slog.Level, format string, v []any) {
	if s.refusals != nil && level >= slog.LevelError {
		s.refusals.count(format, v)
	}
	if s.storeFailed != nil && level >= slog.LevelWarn && storeFailure(format, v) {
		s.storeFailed.Store(true)
	}
	if !s.l.Enabled(context.Background(), level) {
		return
	}
	s.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
}

// Noticef logs at debug, except for the notices that report trouble.
func (s slogLogger) Noticef(format string, v ...any) {
	level := slog.LevelDebug
	if troubleNotice(format) {
		level = slog.LevelWarn
	}
	s.log(level, format, v)
}

func (s slogLogger) Warnf(format string, v ...any) { s.log(slog.LevelWarn, format, v) }

// Fatalf logs at error level: the embedding process decides whether to exit.
func (s slogLogger) Fatalf(format string, v ...any) { s.log(slog.LevelError, format, v) }
func (s slogLogger) Errorf(format string, v ...any) { s.log(slog.LevelError, format, v) }
func (s slogLogger) Debugf(format string, v ...any) { s.log(slog.LevelDebug, format, v) }
func (s slogLogger) Tracef(format string, v ...any) { s.log(slog.LevelDebug-4, format, v) }

// troubleNotices are the nats-server notices an operator must see: clients
// dropped for not reading, and JetStream running out of resources.
var troubleNotices = []string{"Slow Consumer", "out of resources", "DISABLED"}

// storeFailures are in nats-server's reports of a store write that failed:
// a stream so reported refuses every later write until it is reloaded.
var storeFailures = []string{"critical write error", "out of resources", "disabling jetstream", "no space left"}

func storeFailure(format string, v []any) bool {
	msg := strings.ToLower(format)
	for _, a := range v {
		if err, ok := a.(error); ok {
			msg += " " + strings.ToLower(err.Error())
		}
	}
	for _, f := range storeFailures {
		if strings.Contains(msg, f) {
			return true
		}
	}
	return false
}

func troubleNotice(format string) bool {
	for _, t := range troubleNotices {
		if strings.Contains(format, t) {
			return true
		}
	}
	return false
}
