package embedded

import (
	"context"
	"fmt"
	"log/slog"
)

// slogLogger bridges the nats-server logger interface to slog. Its methods may
// be called concurrently.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) log(level slog.Level, format string, v []any) {
	if !s.l.Enabled(context.Background(), level) {
		return
	}
	s.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
}

func (s slogLogger) Noticef(format string, v ...any) { s.log(slog.LevelInfo, format, v) }
func (s slogLogger) Warnf(format string, v ...any)   { s.log(slog.LevelWarn, format, v) }

// Fatalf logs at error level: the embedding process decides whether to exit.
func (s slogLogger) Fatalf(format string, v ...any) { s.log(slog.LevelError, format, v) }
func (s slogLogger) Errorf(format string, v ...any) { s.log(slog.LevelError, format, v) }
func (s slogLogger) Debugf(format string, v ...any) { s.log(slog.LevelDebug, format, v) }
func (s slogLogger) Tracef(format string, v ...any) { s.log(slog.LevelDebug-4, format, v) }
