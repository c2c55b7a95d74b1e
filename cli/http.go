package cli

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rbee/heartbeat/queen"
)

// newHTTPHandler serves the queen's registry and metrics:
// GET /v1/workers, /v1/hives (JSON arrays of registry entries), /healthz and
// /metrics (Prometheus text format).
func newHTTPHandler(q *queen.Queen) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(q.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if q.Registry() == nil {
			http.Error(w, "registry not loaded", http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/workers", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, q.Registry().Workers())
	})
	mux.HandleFunc("GET /v1/hives", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, q.Registry().Hives())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func serveHTTP(addr string, q *queen.Queen, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: newHTTPHandler(q), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	log.Info("http api ready", "addr", "http://"+ln.Addr().String())
	return hs, nil
}
