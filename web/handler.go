package web

import (
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"time"

	"github.com/rbee/heartbeat/events"
)

//go:embed static
var static embed.FS

// Static returns the handler of the page and its assets (index.html at /).
// It needs no View: without one the page says that live updates are off.
func Static() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Everything the page loads comes from here: no CDN, no inline script.
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// Events returns the handler of the server-sent event stream the page reads
// (text/event-stream). A page first receives a "snapshot" message (now_ms,
// workers, hives, recent events), then "update" messages (changed workers and
// hives, removed keys) and "event" messages (one registry event each).
// Query parameters event and exclude (comma-separated or repeated) keep only
// some registry events, in the snapshot and after it; a name that is not an
// event type answers 400. It answers 503 while the view is not running.
func (v *View) Events() http.Handler {
	return http.HandlerFunc(v.serveEvents)
}

func (v *View) serveEvents(w http.ResponseWriter, r *http.Request) {
	f, err := events.ParseFilter(r.URL.Query()["event"], r.URL.Query()["exclude"])
	if err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	c, snap, err := v.subscribe(f)
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, ErrNotRunning) {
			status = http.StatusServiceUnavailable
		}
		http.Error(w, err.Error(), status)
		return
	}
	defer v.unsubscribe(c)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	send := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(v.cfg.WriteTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// retry: how long the browser waits before reconnecting after a drop.
	if !send(append([]byte("retry: 2000\n\n"), snap...)) {
		return
	}
	keep := time.NewTicker(v.cfg.KeepAlive)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-c.gone:
			// Deliver what was queued before the drop, then end the stream.
			for {
				select {
				case b := <-c.ch:
					if !send(b) {
						return
					}
				default:
					return
				}
			}
		case b := <-c.ch:
			if !send(b) {
				return
			}
		case <-keep.C:
			if !send([]byte(": keep-alive\n\n")) {
				return
			}
		}
	}
}
