package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/queen"
	"github.com/rbee/heartbeat/subjects"
)

// ingestResult is the throughput of the queen and of the three references
// for one fleet size.
type ingestResult struct {
	Workers      int     `json:"workers"`
	PayloadBytes float64 `json:"payload_bytes_msgpack"`
	JSONBytes    float64 `json:"payload_bytes_json"`
	BeatsPerRun  uint64  `json:"beats_per_trial"`

	Queen  summary      `json:"queen"`
	Verify verification `json:"queen_verification"`
	// RSS is the process's resident set after the queen's trials (queen,
	// in-process broker and the fleet's fixtures).
	RSS int64 `json:"rss_after_queen_bytes"`

	Core     summary `json:"core_nats"`
	Store    summary `json:"store_kv_lean"`
	StoreStd summary `json:"store_kv_publish_msg_async"`
	Relay    summary `json:"relay_core_to_kv"`
	HTTP     summary `json:"http_json"`

	RatioStore float64 `json:"queen_over_store"`
	RatioHTTP  float64 `json:"queen_over_http"`
	RatioCore  float64 `json:"queen_over_core"`
}

const ingestTTL = 10 * time.Minute // nothing expires during a run

// measureIngest runs every system for a fleet of n workers.
func measureIngest(o options, n int) (ingestResult, error) {
	f, err := newFleet(n)
	if err != nil {
		return ingestResult{}, err
	}
	r := ingestResult{Workers: n}
	r.PayloadBytes, r.JSONBytes = f.meanSize()
	rounds := max(1, o.beats/n)
	r.BeatsPerRun = uint64(rounds * n)
	limit := 120 * time.Second

	log.Printf("ingest %d workers: queen", n)
	if r.Queen, r.Verify, r.RSS, err = ingestQueen(o, f, r.BeatsPerRun, limit); err != nil {
		return r, fmt.Errorf("queen: %w", err)
	}

	log.Printf("ingest %d workers: core NATS", n)
	if r.Core, err = ingestCore(o, f, r.BeatsPerRun, limit); err != nil {
		return r, fmt.Errorf("core: %w", err)
	}
	log.Printf("ingest %d workers: KV publishes, lean", n)
	if r.Store, err = ingestStore(o, f, r.BeatsPerRun, limit, false, false); err != nil {
		return r, fmt.Errorf("store: %w", err)
	}
	log.Printf("ingest %d workers: KV publishes, PublishMsgAsync with Nats-TTL", n)
	if r.StoreStd, err = ingestStore(o, f, r.BeatsPerRun, limit, false, true); err != nil {
		return r, fmt.Errorf("store (PublishMsgAsync): %w", err)
	}
	log.Printf("ingest %d workers: relay", n)
	if r.Relay, err = ingestStore(o, f, r.BeatsPerRun, limit, true, false); err != nil {
		return r, fmt.Errorf("relay: %w", err)
	}
	log.Printf("ingest %d workers: HTTP/JSON", n)
	if r.HTTP, err = ingestHTTP(o, f, limit); err != nil {
		return r, fmt.Errorf("http: %w", err)
	}
	// The store limit is measured as the queen writes: PublishMsgAsync with a
	// per-message TTL.
	r.RatioStore = r.Queen.Median / r.StoreStd.Median
	r.RatioHTTP = r.Queen.Median / r.HTTP.Median
	r.RatioCore = r.Queen.Median / r.Core.Median
	return r, nil
}

func ingestQueen(o options, f *fleet, beats uint64, limit time.Duration) (summary, verification, int64, error) {
	dir, err := os.MkdirTemp("", "rbee-bench-queen-")
	if err != nil {
		return summary{}, verification{}, 0, err
	}
	defer os.RemoveAll(dir)
	s, err := startQueenStack(dir, o.childBroker, ingestTTL, nil)
	if err != nil {
		return summary{}, verification{}, 0, err
	}
	defer s.Stop()
	g := &gen{f: f, s: newQueenSink(s, f), window: o.window, brokerPID: s.b.PID}
	sum, err := g.trials(o.trials, beats, limit)
	if err != nil {
		return sum, verification{}, 0, err
	}
	rss := rssBytes("self")
	v := verify(s, f, g.cursor)
	if !v.OK {
		sum.Notes = append(sum.Notes, v.Problems...)
	}
	return sum, v, rss, nil
}

func ingestCore(o options, f *fleet, beats uint64, limit time.Duration) (summary, error) {
	dir, err := os.MkdirTemp("", "rbee-bench-core-")
	if err != nil {
		return summary{}, err
	}
	defer os.RemoveAll(dir)
	b, err := startBroker(dir, o.childBroker)
	if err != nil {
		return summary{}, err
	}
	defer b.Stop()
	errs := &asyncErrors{}
	pub, err := connect(b.URL, "bench-loadgen", errs)
	if err != nil {
		return summary{}, err
	}
	defer pub.Close()
	subc, err := connect(b.URL, "bench-core-sub", errs)
	if err != nil {
		return summary{}, err
	}
	defer subc.Close()
	c, err := newCoreSink(pub, subc, f, subjects.Default().All())
	if err != nil {
		return summary{}, err
	}
	g := &gen{f: f, s: c, window: o.window, brokerPID: b.PID}
	sum, err := g.trials(o.trials, beats, limit)
	if err == nil {
		err = errs.err()
	}
	return sum, err
}

// ingestStore measures KV puts into the worker bucket's stream, sent by the
// generator itself (relay false) or forwarded by a core subscriber, with the
// lean publisher or JetStream's PublishMsgAsync (std).
func ingestStore(o options, f *fleet, beats uint64, limit time.Duration, relay, std bool) (summary, error) {
	dir, err := os.MkdirTemp("", "rbee-bench-store-")
	if err != nil {
		return summary{}, err
	}
	defer os.RemoveAll(dir)
	b, err := startBroker(dir, o.childBroker)
	if err != nil {
		return summary{}, err
	}
	defer b.Stop()
	errs := &asyncErrors{}
	pub, err := connect(b.URL, "bench-loadgen", errs)
	if err != nil {
		return summary{}, err
	}
	defer pub.Close()
	if err := createWorkerBucket(pub); err != nil {
		return summary{}, err
	}
	qc := queen.DefaultConfig()
	pc := pub
	if relay {
		if pc, err = connect(b.URL, "bench-relay", errs); err != nil {
			return summary{}, err
		}
		defer pc.Close()
	}
	p, err := newKVPublisher(pc, std, qc.MaxInFlight, qc.WriteTimeout)
	if err != nil {
		return summary{}, err
	}
	if std {
		// The TTL the queen writes for a 30 s beat: Missed × interval.
		p.ttl = strconv.Itoa(qc.Missed*30) + "s"
	}
	var s sink = &storeSink{f: f, p: p}
	if relay {
		if s, err = newRelaySink(pub, pc, f, p); err != nil {
			return summary{}, err
		}
	}
	g := &gen{f: f, s: s, window: o.window, brokerPID: b.PID}
	sum, err := g.trials(o.trials, beats, limit)
	if err != nil {
		return sum, err
	}
	if n := p.fails.Load(); n != 0 {
		return sum, fmt.Errorf("%d publishes failed", n)
	}
	return sum, errs.err()
}

// createWorkerBucket creates the worker bucket as the queen would.
func createWorkerBucket(nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.CreateOrUpdateKeyValue(ctx, queen.BucketConfig(subjects.Default().WorkersBucket(), queen.DefaultConfig().MaxTTL, 1))
	return err
}

func ingestHTTP(o options, f *fleet, limit time.Duration) (summary, error) {
	s, err := startSeedServer()
	if err != nil {
		return summary{}, err
	}
	defer s.Stop()
	c := newSeedClient(f, s, o.httpSenders)
	sum, err := c.trials(o.trials, uint64(o.httpBeats), limit)
	if err != nil {
		return sum, err
	}
	if s.size() != f.n || s.bad.Load() != 0 {
		return sum, fmt.Errorf("seed server holds %d workers (want %d), %d bad requests", s.size(), f.n, s.bad.Load())
	}
	return sum, nil
}
