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
)

// hiveVariants returns hives that exercise every branch of the encoder.
func hiveVariants() []Hive {
	var out []Hive
	add := func(f func(h *Hive)) {
		h := goldenHive()
		f(&h)
		out = append(out, h)
	}
	add(func(*Hive) {})
	add(func(h *Hive) { *h = benchHive() })
	add(func(h *Hive) { h.GPUs, h.Workers = nil, nil })
	add(func(h *Hive) { h.GPUs, h.Workers = []GPU{}, []HiveWorker{} })
	add(func(h *Hive) { h.HostTemperatureC, h.StatsStale, h.StatsAgeMs = nil, false, 0 })
	add(func(h *Hive) { h.HostTemperatureC, h.StatsAgeMs = ptr(-40.0), -5 })
	for _, f := range []float64{0, 1, -1, 0.5, -0.5, 1e300, -1e300, math.MaxInt64, 3.14159, math.Inf(1), math.SmallestNonzeroFloat64, 1 << 53, float64(float32(0.1))} {
		add(func(h *Hive) {
			h.CPUPercent = f
			h.GPUs[0].UtilPercent, h.GPUs[0].PowerW, h.GPUs[0].TemperatureC = ptr(f), ptr(f), ptr(f)
		})
	}
	for _, u := range []uint64{0, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxUint64} {
		add(func(h *Hive) {
			h.RAMUsedBytes, h.RAMTotalBytes = u, u
			h.GPUs[0].VRAMUsedBytes, h.GPUs[0].VRAMTotalBytes = ptr(u), ptr(u)
		})
	}
	add(func(h *Hive) { // array16 and map16 headers, long strings
		for i := range 20 {
			h.GPUs = append(h.GPUs, GPU{Index: i, UUID: strings.Repeat("u", 40), Name: strings.Repeat("n", 300)})
			h.Workers = append(h.Workers, HiveWorker{WorkerID: fmt.Sprint("w", i), Status: StatusReady, Health: Healthy, LastSeenMs: -1})
		}
		h.HealthReason = strings.Repeat("r", 70000)
	})
	add(func(h *Hive) { // every GPU field set, health and reason on every GPU
		for i := range h.GPUs {
			g := &h.GPUs[i]
			g.VRAMUsedBytes, g.VRAMTotalBytes, g.UtilPercent, g.TemperatureC, g.PowerW = ptr[uint64](1), ptr[uint64](2), ptr(3.5), ptr(4.0), ptr(5.25)
			g.Health, g.HealthReason = Degraded, "why"
		}
	})
	return out
}

func TestHiveCodecMatchesReflection(t *testing.T) {
	for i, h := range hiveVariants() {
		e := HiveEntry{Hive: h, Received: Received{ReceivedAtMs: 1767225601247, FirstSeenMs: 1, SkewMs: -3}}
		for _, v := range []any{&e.Hive, &e} {
			got, err := Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if want := reflectMarshal(t, v); !bytes.Equal(got, want) {
				t.Fatalf("variant %d %T:\n got  %s\n want %s", i, v, short(got), short(want))
			}
		}
		checkHiveFastDecode(t, reflectMarshal(t, &e))
		checkHiveFastDecode(t, reflectMarshal(t, &e.Hive))
	}
}

// checkHiveFastDecode holds the hive fast path to the reflection decoder on
// data, as checkFastDecode does for workers.
func checkHiveFastDecode(t *testing.T, data []byte) (fastHive, fastEntry bool) {
	t.Helper()
	if len(data) > MaxPayload {
		return false, false
	}
	var fh Hive
	if fastHive = decodeHiveFast(data, &fh, nil); fastHive {
		var rh Hive
		if err := unmarshal(data, &rh); err != nil {
			t.Fatalf("fast path decoded a hive the reflection decoder refuses (%v): %s", err, short(data))
		}
		if !equalNaN(fh, rh) {
			t.Fatalf("hive differs:\n fast %+v\n refl %+v\n data %s", fh, rh, short(data))
		}
	}
	var fe HiveEntry
	if fastEntry = decodeHiveFast(data, &fe.Hive, &fe.Received); fastEntry {
		var re HiveEntry
		if err := unmarshal(data, &re); err != nil {
			t.Fatalf("fast path decoded a hive entry the reflection decoder refuses (%v): %s", err, short(data))
		}
		if !equalNaN(fe, re) {
			t.Fatalf("hive entry differs:\n fast %+v\n refl %+v\n data %s", fe, re, short(data))
		}
	}
	return fastHive, fastEntry
}

// equalNaN is reflect.DeepEqual that also holds NaN equal to NaN, comparing
// the two values' re-encodings when DeepEqual says no.
func equalNaN(a, b any) bool {
	if reflect.DeepEqual(a, b) {
		return true
	}
	ea, err1 := reflectMarshalAny(a)
	eb, err2 := reflectMarshalAny(b)
	return err1 == nil && err2 == nil && bytes.Equal(ea, eb)
}

func reflectMarshalAny(v any) ([]byte, error) {
	switch v := v.(type) {
	case Hive:
		return Marshal(&v)
	case HiveEntry:
		return Marshal(&v)
	}
	return nil, fmt.Errorf("type %T", v)
}

func TestHiveFastDecodeCases(t *testing.T) {
	h := goldenHive()
	good := reflectMarshal(t, &h)
	enc := func(m map[string]any) []byte { return reflectMarshal(t, m) }
	gpu := map[string]any{"index": 1, "uuid": "u", "vram_used_bytes": 5, "util_percent": 1.5}
	tests := []struct {
		name string
		data []byte
		fast bool
	}{
		{"hive", good, true},
		{"entry", reflectMarshal(t, &HiveEntry{Hive: h, Received: Received{SkewMs: 1}}), true},
		{"ints and nils for floats", enc(map[string]any{"cpu_percent": 7, "host_temperature_c": nil, "gpus": []any{map[string]any{"util_percent": nil, "power_w": -3}}}), true},
		{"float32", []byte{0x81, 0xab, 'c', 'p', 'u', '_', 'p', 'e', 'r', 'c', 'e', 'n', 't', 0xca, 0x3f, 0xc0, 0, 0}, true},
		{"nil bool", enc(map[string]any{"stats_stale": nil}), true},
		{"nil arrays", enc(map[string]any{"gpus": nil, "workers": nil}), true},
		{"gpu with unknown scalar", enc(map[string]any{"gpus": []any{map[string]any{"index": 0, "x": "y"}}}), true},
		{"repeated key in a gpu", []byte{0x81, 0xa4, 'g', 'p', 'u', 's', 0x91, 0x82, 0xa5, 'i', 'n', 'd', 'e', 'x', 1, 0xa5, 'i', 'n', 'd', 'e', 'x', 2}, true},
		{"nil gpu", enc(map[string]any{"gpus": []any{nil}}), false},
		{"gpu as array", enc(map[string]any{"gpus": []any{[]any{1, "u"}}}), false},
		{"too many gpus", enc(map[string]any{"gpus": make([]any, MaxGPUs+1)}), false},
		{"string for float", enc(map[string]any{"cpu_percent": "1"}), false},
		{"int for bool", enc(map[string]any{"stats_stale": 1}), false},
		{"map for gpus", enc(map[string]any{"gpus": map[string]any{}}), false},
		{"unknown nested key", enc(map[string]any{"x": []any{1}}), false},
		{"huge array32", []byte{0x81, 0xa4, 'g', 'p', 'u', 's', 0xdd, 0xff, 0xff, 0xff, 0xff}, false},
		{"truncated", good[:len(good)/2], false},
		{"trailing byte", append(bytes.Clone(good), 0), false},
		{"gpus key twice", []byte{0x82, 0xa4, 'g', 'p', 'u', 's', 0x90, 0xa4, 'g', 'p', 'u', 's', 0x90}, false},
		{"gpu fields", enc(map[string]any{"gpus": []any{gpu}}), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fh, fe := checkHiveFastDecode(t, tt.data)
			if fh != tt.fast || fe != tt.fast {
				t.Fatalf("fast path took it: hive %v entry %v, want %v", fh, fe, tt.fast)
			}
		})
	}
}

func TestDecodeHiveAllocations(t *testing.T) {
	h := benchHive()
	b, _ := Marshal(&h)
	got, err := DecodeHive(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, h) {
		t.Fatalf("got %+v", *got)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = DecodeHive(b) }); n > 8 {
		t.Errorf("DecodeHive allocates %v times, want at most 8", n)
	}
}

// FuzzHiveFastDecode holds the hive fast path to the reflection decoder on
// arbitrary input.
func FuzzHiveFastDecode(f *testing.F) {
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
		checkHiveFastDecode(t, data)
	})
}
