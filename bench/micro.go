package main

import (
	"encoding/json"
	"testing"

	"github.com/rbee/heartbeat/wire"
)

// microResult is one encode/decode benchmark (the same bodies as
// wire/bench_test.go, run with testing.Benchmark).
type microResult struct {
	Name        string  `json:"name"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  int64   `json:"bytes_per_op"`
	AllocsPerOp int64   `json:"allocs_per_op"`
	Size        int     `json:"payload_bytes"`
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func microBenchmarks() []microResult {
	w := sampleWorker(42)
	h := sampleHive()
	we := wire.WorkerEntry{Worker: w, Received: wire.Received{ReceivedAtMs: sentAtBase + 3, FirstSeenMs: sentAtBase - 60000, SkewMs: 3}}
	wb := must(wire.Marshal(&w))
	hb := must(wire.Marshal(&h))
	web := must(wire.Marshal(&we))
	cases := []struct {
		name string
		size int
		f    func()
	}{
		{"Marshal/worker", len(wb), func() { _ = must(wire.Marshal(&w)) }},
		{"Marshal/worker_entry", len(web), func() { _ = must(wire.Marshal(&we)) }},
		{"Marshal/hive", len(hb), func() { _ = must(wire.Marshal(&h)) }},
		{"DecodeWorker", len(wb), func() { _ = must(wire.DecodeWorker(wb)) }},
		{"DecodeWorkerEntry", len(web), func() { _ = must(wire.DecodeWorkerEntry(web)) }},
		{"DecodeHive", len(hb), func() { _ = must(wire.DecodeHive(hb)) }},
	}
	var out []microResult
	for _, c := range cases {
		r := testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.f()
			}
		})
		out = append(out, microResult{Name: c.name, NsPerOp: float64(r.T.Nanoseconds()) / float64(r.N),
			BytesPerOp: r.AllocedBytesPerOp(), AllocsPerOp: r.AllocsPerOp(), Size: c.size})
	}
	return out
}

// sizeResult compares the msgpack payloads with the same data as JSON.
type sizeResult struct {
	WorkerMsgpack int     `json:"worker_msgpack"`
	WorkerJSON    int     `json:"worker_json"`
	WorkerRatio   float64 `json:"worker_ratio"`
	EntryMsgpack  int     `json:"worker_entry_msgpack"`
	EntryJSON     int     `json:"worker_entry_json"`
	HiveMsgpack   int     `json:"hive_msgpack"`
	HiveJSON      int     `json:"hive_json"`
	HiveRatio     float64 `json:"hive_ratio"`
	HiveGPUs      int     `json:"hive_gpus"`
	HiveWorkers   int     `json:"hive_workers"`
	// Bytes spent on map keys (their msgpack strings) in each payload.
	WorkerKeyBytes int `json:"worker_key_bytes"`
	HiveKeyBytes   int `json:"hive_key_bytes"`
}

// keyBytes returns the msgpack bytes of every map key in v, a value from
// wire.DecodeAny.
func keyBytes(v any) int {
	n := 0
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			n += len(k) + 1 + keyBytes(e)
			if len(k) >= 32 {
				n++
			}
		}
	case []any:
		for _, e := range v {
			n += keyBytes(e)
		}
	}
	return n
}

// measureSizes encodes the fixture worker and hive (8 GPUs, 8 workers) both
// ways: wire.Marshal and encoding/json of the same struct.
func measureSizes() (sizeResult, error) {
	w := sampleWorker(42)
	we := wire.WorkerEntry{Worker: w, Received: wire.Received{ReceivedAtMs: sentAtBase + 3, FirstSeenMs: sentAtBase - 60000, SkewMs: 3}}
	h := sampleHive()
	var r sizeResult
	for _, c := range []struct {
		v      any
		mp, js *int
	}{{&w, &r.WorkerMsgpack, &r.WorkerJSON}, {&we, &r.EntryMsgpack, &r.EntryJSON}, {&h, &r.HiveMsgpack, &r.HiveJSON}} {
		mp, err := wire.Marshal(c.v)
		if err != nil {
			return r, err
		}
		js, err := json.Marshal(c.v)
		if err != nil {
			return r, err
		}
		*c.mp, *c.js = len(mp), len(js)
		if c.mp == &r.WorkerMsgpack || c.mp == &r.HiveMsgpack {
			a, err := wire.DecodeAny(mp)
			if err != nil {
				return r, err
			}
			if c.mp == &r.WorkerMsgpack {
				r.WorkerKeyBytes = keyBytes(a)
			} else {
				r.HiveKeyBytes = keyBytes(a)
			}
		}
	}
	r.WorkerRatio = float64(r.WorkerMsgpack) / float64(r.WorkerJSON)
	r.HiveRatio = float64(r.HiveMsgpack) / float64(r.HiveJSON)
	r.HiveGPUs, r.HiveWorkers = len(h.GPUs), len(h.Workers)
	return r, nil
}
