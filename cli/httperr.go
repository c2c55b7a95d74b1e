package cli

import (
	"net/http"
	"strings"
)

// jsonErrors answers every error of h that is not JSON already — the mux's
// own 404 and 405, the static files' 404 — as {"error": "…"}, so that a
// client of the API parses one shape of error whatever went wrong.
func jsonErrors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&jsonErrorWriter{ResponseWriter: w, r: r}, r)
	})
}

// jsonErrorWriter replaces a plain-text error's body with a JSON one.
type jsonErrorWriter struct {
	http.ResponseWriter
	r        *http.Request
	replaced bool
}

func (w *jsonErrorWriter) WriteHeader(code int) {
	h := w.Header()
	if code < 400 || strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	var msg string
	switch code {
	case http.StatusNotFound:
		msg = "no such page: " + w.r.URL.Path
	case http.StatusMethodNotAllowed:
		msg = "method " + w.r.Method + " not allowed on " + w.r.URL.Path
		if allow := h.Get("Allow"); allow != "" {
			msg += " (allowed: " + allow + ")"
		}
	default:
		msg = strings.ToLower(http.StatusText(code))
	}
	h.Del("Content-Length")
	w.replaced = true
	writeError(w.ResponseWriter, code, msg)
}

func (w *jsonErrorWriter) Write(p []byte) (int, error) {
	if w.replaced {
		return len(p), nil // the plain-text body the JSON one replaced
	}
	return w.ResponseWriter.Write(p)
}

// Flush lets the event stream through the wrapper.
func (w *jsonErrorWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *jsonErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
