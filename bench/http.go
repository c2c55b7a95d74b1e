package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	srv     *http.Server
	ln      net.Listener
	bad     atomic.Uint64
}

func startSeedServer() (*seedServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &seedServer{workers: map[string]*wire.Worker{}, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/heartbeat", s.beat)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *seedServer) beat(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, wire.MaxPayload+1))
	if err != nil || len(body) > wire.MaxPayload {
		s.bad.Add(1)
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	var b wire.Worker
	if err := json.Unmarshal(body, &b); err != nil {
		s.bad.Add(1)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := b.Validate(); err != nil {
		s.bad.Add(1)
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	key := subjects.WorkerKey(b.HiveID, b.WorkerID)
	s.mu.Lock()
	s.workers[key] = &b
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (s *seedServer) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}

func (s *seedServer) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.workers)
}

// seedClient posts the fleet's JSON beats with a few concurrent senders over
// keep-alive connections.
type seedClient struct {
	f       *fleet
	url     string
	senders int
	c       *http.Client
	cursor  atomic.Uint64
}

func newSeedClient(f *fleet, s *seedServer, senders int) *seedClient {
	tr := &http.Transport{MaxIdleConns: senders, MaxIdleConnsPerHost: senders, MaxConnsPerHost: senders,
		DisableCompression: true, IdleConnTimeout: time.Minute}
	return &seedClient{f: f, url: "http://" + s.ln.Addr().String() + "/v1/heartbeat", senders: senders,
		c: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// run posts beats beats (each sender patches its own copy of the body) and
// returns when all are answered.
func (c *seedClient) run(beats uint64, limit time.Duration) (trial, error) {
	var (
		wg       sync.WaitGroup
		failed   atomic.Uint64
		firstErr onceErr
	)
	pcpu0 := processCPU()
	start := time.Now()
	deadline := start.Add(limit)
	end := c.cursor.Load() + beats
	n := uint64(c.f.n)
	for range c.senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body []byte
			rd := bytes.NewReader(nil)
			for {
				k := c.cursor.Add(1) - 1
				if k >= end {
					return
				}
				if time.Now().After(deadline) {
					firstErr.set(errors.New("time limit"))
					return
				}
				i := int(k % n)
				body = append(body[:0], c.f.js[i]...)
				putDigits(body[c.f.jsSeq[i]:c.f.jsSeq[i]+10], seqOf(k/n+1))
				putDigits(body[c.f.jsSent[i]:c.f.jsSent[i]+13], uint64(time.Now().UnixMilli()))
				rd.Reset(body)
				resp, err := c.c.Post(c.url, "application/json", rd)
				if err != nil {
					failed.Add(1)
					firstErr.set(err)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					failed.Add(1)
					firstErr.set(fmt.Errorf("status %s", resp.Status))
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if err := firstErr.get(); err != nil {
		return trial{}, fmt.Errorf("%d failed posts: %w", failed.Load(), err)
	}
	return trial{Beats: beats, Elapsed: el, Rate: float64(beats) / el.Seconds(), ProcCPU: processCPU() - pcpu0}, nil
}

// trials warms with one beat per worker, then runs count timed trials.
func (c *seedClient) trials(count int, beats uint64, limit time.Duration) (summary, error) {
	if _, err := c.run(uint64(c.f.n), limit); err != nil {
		return summary{}, fmt.Errorf("warm-up: %w", err)
	}
	var ts []trial
	for range count {
		t, err := c.run(beats, limit)
		if err != nil {
			return summary{}, err
		}
		ts = append(ts, t)
	}
	return summarise(ts), nil
}

// onceErr keeps the first error set.
type onceErr struct {
	mu  sync.Mutex
	err error
}

func (o *onceErr) set(err error) {
	o.mu.Lock()
	if o.err == nil {
		o.err = err
	}
	o.mu.Unlock()
}

func (o *onceErr) get() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}
