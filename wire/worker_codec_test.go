package wire

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// reflectMarshal is the reflection encoder the hand-written one must match.
func reflectMarshal(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	e.UseCompactInts(true)
	e.UseCompactFloats(true)
	if err := e.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestWorkerCodecMatchesReflection(t *testing.T) {
	ints := []int64{0, 1, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxInt64,
		-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64}
	strs := []string{"", "a", strings.Repeat("x", 31), strings.Repeat("x", 32), strings.Repeat("x", 255),
		strings.Repeat("x", 256), strings.Repeat("x", 65535), strings.Repeat("x", 65536)}
	tests := []struct {
		name string
		f    func(w *Worker, rec *Received, i int)
		n    int
	}{
		{"sample", func(*Worker, *Received, int) {}, 1},
		{"ints", func(w *Worker, rec *Received, i int) {
			n := ints[i]
			w.V, w.SentAtMs, w.IntervalMs, w.SlotsTotal, w.SlotsBusy = int(n), n, n, int(n), int(n)
			w.Seq = uint64(n)
			rec.ReceivedAtMs, rec.FirstSeenMs, rec.SkewMs = n, n, n
		}, len(ints)},
		{"strings", func(w *Worker, _ *Received, i int) {
			s := strs[i]
			w.InstanceID, w.HealthReason, w.HiveID, w.WorkerID, w.ModelID, w.Device, w.URL, w.Version = s, s, s, s, s, s, s, s
			w.Health, w.Status = Health(s), Status(s)
		}, len(strs)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range tt.n {
				e := WorkerEntry{Worker: sampleWorker(), Received: Received{ReceivedAtMs: 5, FirstSeenMs: 4, SkewMs: -3}}
				tt.f(&e.Worker, &e.Received, i)
				for _, v := range []any{&e.Worker, &e} {
					got, err := Marshal(v)
					if err != nil {
						t.Fatal(err)
					}
					if want := reflectMarshal(t, v); !bytes.Equal(got, want) {
						t.Fatalf("case %d %T:\n got  %s\n want %s", i, v, short(got), short(want))
					}
					if len(got) != cap(got) {
						t.Fatalf("case %d %T: %d bytes in a buffer of %d: the size is not exact", i, v, len(got), cap(got))
					}
				}
				b := reflectMarshal(t, &e)
				if got := AppendWorkerEntry(nil, &e.Worker, e.Received); !bytes.Equal(got, b) {
					t.Fatalf("case %d: AppendWorkerEntry:\n got  %s\n want %s", i, short(got), short(b))
				}
				checkFastDecode(t, b)
			}
		})
	}
}

// short returns data in hex, cut to 128 bytes.
func short(data []byte) string {
	if len(data) > 128 {
		return fmt.Sprintf("%x… (%d bytes)", data[:128], len(data))
	}
	return fmt.Sprintf("%x", data)
}

// checkFastDecode holds the fast path to the reflection decoder on data:
// where the fast path decodes, the reflection decoder must succeed with the
// same values, for a Worker and for a WorkerEntry.
func checkFastDecode(t *testing.T, data []byte) (fastWorker, fastEntry bool) {
	t.Helper()
	if len(data) > MaxPayload { // refused before either decoder runs
		return false, false
	}
	var fw Worker
	if fastWorker = decodeWorkerFast(data, &fw, nil); fastWorker {
		var rw Worker
		if err := unmarshal(data, &rw); err != nil {
			t.Fatalf("fast path decoded a worker the reflection decoder refuses (%v): %s", err, short(data))
		}
		if !reflect.DeepEqual(fw, rw) {
			t.Fatalf("worker differs:\n fast %+v\n refl %+v\n data %s", fw, rw, short(data))
		}
	}
	var fe WorkerEntry
	if fastEntry = decodeWorkerFast(data, &fe.Worker, &fe.Received); fastEntry {
		var re WorkerEntry
		if err := unmarshal(data, &re); err != nil {
			t.Fatalf("fast path decoded an entry the reflection decoder refuses (%v): %s", err, short(data))
		}
		if !reflect.DeepEqual(fe, re) {
			t.Fatalf("entry differs:\n fast %+v\n refl %+v\n data %s", fe, re, short(data))
		}
	}
	return fastWorker, fastEntry
}

func TestWorkerFastDecodeCases(t *testing.T) {
	w := sampleWorker()
	enc := func(m map[string]any) []byte { return reflectMarshal(t, m) }
	tests := []struct {
		name string
		data []byte
		fast bool // whether the fast path should take it
	}{
		{"worker", reflectMarshal(t, &w), true},
		{"entry", reflectMarshal(t, &WorkerEntry{Worker: w, Received: Received{ReceivedAtMs: 9}}), true},
		{"empty map", []byte{0x80}, true},
		{"map16 and map32 headers", []byte{0xde, 0, 1, 0xa1, 'v', 0x01}, true},
		{"map32", []byte{0xdf, 0, 0, 0, 1, 0xa3, 's', 'e', 'q', 0xd0, 0xff}, true},
		{"nil values", enc(map[string]any{"v": nil, "hive_id": nil, "seq": nil}), true},
		{"bin string", []byte{0x81, 0xa7, 'h', 'i', 'v', 'e', '_', 'i', 'd', 0xc4, 2, 'h', '1'}, true},
		{"bin key", []byte{0x81, 0xc4, 1, 'v', 0x01}, true},
		{"nil key", []byte{0x81, 0xc0, 0x01}, true},
		{"duplicate key", []byte{0x82, 0xa1, 'v', 0x01, 0xa1, 'v', 0x02}, true},
		{"unknown scalar keys", enc(map[string]any{"x": 1.5, "y": "s", "z": true, "received_at_ms": 3}), true},
		{"unknown nested key", enc(map[string]any{"x": []int{1}}), false},
		{"unknown nested map", enc(map[string]any{"x": map[string]int{"a": 1}}), false},
		{"string for int", enc(map[string]any{"v": "1"}), false},
		{"float for int", enc(map[string]any{"slots_total": 1.5}), false},
		{"int for string", enc(map[string]any{"hive_id": 7}), false},
		{"bool for int", enc(map[string]any{"seq": true}), false},
		{"negative seq", enc(map[string]any{"seq": -1}), true},
		{"truncated", reflectMarshal(t, &w)[:40], false},
		{"trailing byte", append(reflectMarshal(t, &w), 0), false},
		{"int key", []byte{0x81, 0x01, 0x01}, false},
		{"array", []byte{0x91, 0x01}, false},
		{"huge map32 count", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}, false},
		{"huge str32", []byte{0x81, 0xa1, 'v', 0xdb, 0xff, 0xff, 0xff, 0xff}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, fe := checkFastDecode(t, tt.data)
			if fw != tt.fast || fe != tt.fast {
				t.Fatalf("fast path took it: worker %v entry %v, want %v", fw, fe, tt.fast)
			}
		})
	}
}

func TestWorkerFastDecodeSharesConstants(t *testing.T) {
	w := sampleWorker()
	b, _ := Marshal(&w)
	got, err := DecodeWorker(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, w) {
		t.Fatalf("got %+v", *got)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = DecodeWorker(b) }); n > 2 {
		t.Errorf("DecodeWorker allocates %v times, want at most 2 (the struct and one string block)", n)
	}
}

// FuzzWorkerFastDecode holds the fast path to the reflection decoder on
// arbitrary input.
func FuzzWorkerFastDecode(f *testing.F) {
	for _, dir := range []string{filepath.Join("testdata", "seeds"), filepath.Join("testdata", "golden")} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.msgpack"))
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkFastDecode(t, data)
	})
}
