package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// seedServer is the design being replaced: every worker POSTs its beat as
// JSON to the scheduler, which decodes and validates it and keeps the last
// one per worker in a map.
type seedServer struct {
	mu      sync.Mutex
	workers map[string]*wire.Worker
	bad     atomic.Uint64
}

func (s *seedServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var b wire.Worker
	body, err := io.ReadAll(io.LimitReader(r.Body, wire.MaxPayload+1))
	if err == nil && len(body) > wire.MaxPayload {
		err = fmt.Errorf("body over %d bytes", wire.MaxPayload)
	}
	if err == nil {
		err = json.Unmarshal(body, &b)
	}
	if err == nil {
		err = b.Validate()
	}
	if err != nil {
		s.bad.Add(1)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.workers[subjects.WorkerKey(b.HiveID, b.WorkerID)] = &b
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// ingestHTTP posts the fleet's JSON beats to a seed server with a few
// concurrent senders over keep-alive connections.
func ingestHTTP(o options, f *fleet) (summary, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return summary{}, err
	}
	s := &seedServer{workers: map[string]*wire.Worker{}}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: o.httpSenders, MaxConnsPerHost: o.httpSenders, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := "http://" + ln.Addr().String() + "/v1/heartbeat"
	var cursor atomic.Uint64
	run := func(beats uint64) (trial, error) {
		t := trial{Beats: beats, Load1: load1(), ProcCPU: processCPU()}
		start, end, n := time.Now(), cursor.Load()+beats, uint64(f.n)
		var wg sync.WaitGroup
		errs := make(chan error, o.httpSenders)
		for range o.httpSenders {
			wg.Go(func() {
				var body []byte
				for k := cursor.Add(1) - 1; k < end; k = cursor.Add(1) - 1 {
					i := int(k % n) // each sender patches its own copy
					body = append(body[:0], f.js[i]...)
					putDigits(body[f.jsSeq[i]:f.jsSeq[i]+10], seqOf(k/n+1))
					putDigits(body[f.jsSent[i]:f.jsSent[i]+13], uint64(time.Now().UnixMilli()))
					resp, err := c.Post(url, "application/json", bytes.NewReader(body))
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						_ = resp.Body.Close()
						if resp.StatusCode != http.StatusNoContent {
							err = fmt.Errorf("status %s", resp.Status)
						}
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return t, err
		}
		t.Elapsed = time.Since(start)
		t.Rate, t.ProcCPU = float64(beats)/t.Elapsed.Seconds(), processCPU()-t.ProcCPU
		return t, nil
	}
	sum, err := trials(run, uint64(f.n), o.trials, uint64(o.httpBeats))
	s.mu.Lock()
	held := len(s.workers)
	s.mu.Unlock()
	if err == nil && (held != f.n || s.bad.Load() != 0) {
		err = fmt.Errorf("seed server holds %d workers (want %d), %d bad requests", held, f.n, s.bad.Load())
	}
	return sum, err
}
