package main

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/rbee/heartbeat/wire"
)

func TestFleetPatch(t *testing.T) {
	f, err := newFleet(20)
	if err != nil {
		t.Fatal(err)
	}
	for i := range f.n {
		f.patch(i, uint64(i)+3, sentAtBase+int64(i))
		w, err := wire.DecodeWorker(f.mp[i])
		if err != nil {
			t.Fatalf("worker %d: %v", i, err)
		}
		var jw wire.Worker
		if err := json.Unmarshal(f.js[i], &jw); err != nil {
			t.Fatalf("worker %d JSON: %v", i, err)
		}
		if w.Seq != seqOf(uint64(i)+3) || w.SentAtMs != sentAtBase+int64(i) || jw.Seq != w.Seq || jw.SentAtMs != w.SentAtMs {
			t.Errorf("worker %d: msgpack seq %d sent %d, JSON seq %d sent %d", i, w.Seq, w.SentAtMs, jw.Seq, jw.SentAtMs)
		}
		if w.SlotsBusy != busyOf(i, uint64(i)+3) || jw.SlotsBusy != w.SlotsBusy || busyOf(i, uint64(i)+4) == w.SlotsBusy {
			t.Errorf("worker %d: slots_busy %d (JSON %d), want %d, another the next round", i, w.SlotsBusy, jw.SlotsBusy, busyOf(i, uint64(i)+3))
		}
		if w.HiveID+"."+w.WorkerID != f.keys[i] {
			t.Errorf("worker %d: key %s.%s, fleet says %s", i, w.HiveID, w.WorkerID, f.keys[i])
		}
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	got := percentiles(ds)
	if want := (percentile{N: 100, P50ms: 50, P99ms: 99, MaxMs: 100, MinMs: 1}); got != want {
		t.Errorf("percentiles = %+v, want %+v", got, want)
	}
	if got := percentiles(nil); got.N != 0 {
		t.Errorf("percentiles(nil) = %+v", got)
	}
}

func TestClassify(t *testing.T) {
	fn := map[string]*profile.Function{}
	loc := func(names ...string) []*profile.Location {
		var ls []*profile.Location
		for _, n := range names {
			if fn[n] == nil {
				fn[n] = &profile.Function{ID: uint64(len(fn) + 1), Name: n}
			}
			ls = append(ls, &profile.Location{ID: uint64(len(ls) + 1), Line: []profile.Line{{Function: fn[n]}}})
		}
		return ls
	}
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		Sample: []*profile.Sample{
			{Value: []int64{1, 60}, Location: loc("runtime.mallocgc", "github.com/rbee/heartbeat/queen.(*Queen).onMsg", "github.com/nats-io/nats%2ego.(*Conn).waitForMsgs")},
			{Value: []int64{1, 30}, Location: loc("github.com/nats-io/nats-server/v2/server.(*client).processInboundMsg")},
			{Value: []int64{1, 10}, Location: loc("runtime.futex")},
		},
	}
	split := classify(p)
	want := []share{{"queen: decode, validate, track a beat", 60}, {"broker (nats-server, in-process)", 30}, {"other (runtime, scheduler, syscalls)", 10}}
	if fmt.Sprint(split) != fmt.Sprint(want) {
		t.Errorf("split = %v, want %v", split, want)
	}
}

// BenchmarkPayload encodes the bench's worker beat and a hive beat (8 GPUs,
// 8 workers) as msgpack (the wire format) and as JSON, reporting the size of
// each: msgpack-B / json-B is the payload-size comparison.
func BenchmarkPayload(b *testing.B) {
	w, h := sampleWorker(42), sampleHive()
	for _, c := range []struct {
		name string
		v    any
	}{{"worker", &w}, {"hive", &h}} {
		for _, enc := range []struct {
			name string
			f    func(any) ([]byte, error)
		}{{"msgpack", wire.Marshal}, {"json", json.Marshal}} {
			b.Run(c.name+"/"+enc.name, func(b *testing.B) {
				b.ReportAllocs()
				var n int
				for b.Loop() {
					data, err := enc.f(c.v)
					if err != nil {
						b.Fatal(err)
					}
					n = len(data)
				}
				b.ReportMetric(float64(n), "payload-B")
			})
		}
	}
}

// BenchmarkGeneratorPatch is the load generator's cost per beat before it
// publishes: patching seq and sent_at_ms in place.
func BenchmarkGeneratorPatch(b *testing.B) {
	f, err := newFleet(1024)
	if err != nil {
		b.Fatal(err)
	}
	var k uint64
	for b.Loop() {
		f.patch(int(k%1024), k/1024+1, sentAtBase)
		k++
	}
}
