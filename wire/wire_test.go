package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func ptr[T any](v T) *T { return &v }

func sampleWorker() Worker {
	return Worker{
		Meta:       Meta{V: 1, InstanceID: "i-1", Seq: 7, SentAtMs: 1700000000000, IntervalMs: 30000, Health: Healthy},
		HiveID:     "gpu-node-1",
		WorkerID:   "llama-0",
		Status:     StatusReady,
		ModelID:    "meta-llama/Llama-3.1-8B-Instruct",
		Device:     "cuda:0",
		URL:        "http://127.0.0.1:9001",
		Version:    "0.1.0",
		SlotsTotal: 4,
		SlotsBusy:  1,
	}
}

func sampleHive() Hive {
	return Hive{
		Meta:          Meta{V: 1, InstanceID: "i-2", Seq: 3, SentAtMs: 1700000000000, IntervalMs: 30000, Health: Degraded, HealthReason: "gpu 1: ecc errors"},
		HiveID:        "gpu-node-1",
		Hostname:      "node1",
		Version:       "0.1.0",
		CPUPercent:    12.5,
		RAMUsedBytes:  1 << 30,
		RAMTotalBytes: 8 << 30,
		GPUs: []GPU{
			{Index: 0, UUID: "GPU-0", Name: "H100", VRAMUsedBytes: ptr[uint64](1 << 30), VRAMTotalBytes: ptr[uint64](80 << 30), UtilPercent: ptr(55.0), TemperatureC: ptr(61.0), PowerW: ptr(312.5)},
			{Index: 1, UUID: "GPU-1", Name: "H100", Health: Degraded, HealthReason: "ecc errors"},
		},
		Workers: []HiveWorker{{WorkerID: "llama-0", Status: StatusBusy, Health: Healthy, ModelID: "m", Device: "cuda:0", LastSeenMs: 1700000000000}},
	}
}

func TestWorkerRoundTrip(t *testing.T) {
	in := sampleWorker()
	b, err := Marshal(&in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeWorker(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, *out) {
		t.Fatalf("round trip:\n in  %+v\n out %+v", in, *out)
	}
}

func TestHiveRoundTrip(t *testing.T) {
	in := sampleHive()
	b, err := Marshal(&in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeHive(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, *out) {
		t.Fatalf("round trip:\n in  %+v\n out %+v", in, *out)
	}
}

func TestEntryRoundTrip(t *testing.T) {
	in := WorkerEntry{Worker: sampleWorker(), Received: Received{ReceivedAtMs: 5, FirstSeenMs: 4, SkewMs: -3}}
	b, err := Marshal(&in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeWorkerEntry(b)
	if err != nil || !reflect.DeepEqual(in, *out) {
		t.Fatalf("round trip: %v\n in  %+v\n out %+v", err, in, out)
	}
	// An entry is a superset of the beat: decoding it as a beat works.
	if _, err := DecodeWorker(b); err != nil {
		t.Fatalf("entry as beat: %v", err)
	}
}

// TestKeysAreSnakeCaseMap holds the encoding to the contract: a map with the
// documented string keys, not a positional array.
func TestKeysAreSnakeCaseMap(t *testing.T) {
	w := sampleWorker()
	b, _ := Marshal(&w)
	var m map[string]any
	if err := msgpack.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"v", "instance_id", "seq", "sent_at_ms", "interval_ms", "health", "health_reason",
		"hive_id", "worker_id", "status", "model_id", "device", "url", "version", "slots_total", "slots_busy"} {
		if _, ok := m[k]; !ok {
			t.Errorf("worker payload lacks key %q", k)
		}
	}
	h := sampleHive()
	b, _ = Marshal(&h)
	m = nil
	if err := msgpack.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"v", "instance_id", "seq", "hive_id", "hostname", "version", "cpu_percent",
		"ram_used_bytes", "ram_total_bytes", "gpus", "workers"} {
		if _, ok := m[k]; !ok {
			t.Errorf("hive payload lacks key %q", k)
		}
	}
	g := m["gpus"].([]any)[0].(map[string]any)
	for _, k := range []string{"index", "uuid", "name", "vram_used_bytes", "vram_total_bytes", "util_percent", "temperature_c", "power_w"} {
		if _, ok := g[k]; !ok {
			t.Errorf("gpu lacks key %q", k)
		}
	}
}

func TestUnknownKeysIgnored(t *testing.T) {
	w := sampleWorker()
	b, _ := Marshal(&w)
	var m map[string]any
	_ = msgpack.Unmarshal(b, &m)
	m["future_key"] = map[string]any{"nested": []int{1, 2}}
	b, _ = msgpack.Marshal(m)
	if _, err := DecodeWorker(b); err != nil {
		t.Fatalf("unknown key refused: %v", err)
	}
}

func mutateWorker(f func(m map[string]any)) []byte {
	w := sampleWorker()
	b, _ := Marshal(&w)
	var m map[string]any
	_ = msgpack.Unmarshal(b, &m)
	f(m)
	b, _ = msgpack.Marshal(m)
	return b
}

func TestDecodeWorkerErrors(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrUndecodable},
		{"garbage", []byte("hello world"), ErrUndecodable},
		{"array", []byte{0x92, 0x01, 0x02}, ErrUndecodable},
		{"truncated", mutateWorker(func(map[string]any) {})[:20], ErrUndecodable},
		{"oversize", append([]byte{0x80}, make([]byte, MaxPayload)...), ErrOversize},
		{"wrong type seq", mutateWorker(func(m map[string]any) { m["seq"] = "seven" }), ErrBadType},
		{"wrong type hive_id", mutateWorker(func(m map[string]any) { m["hive_id"] = 12 }), ErrBadType},
		{"version 2", mutateWorker(func(m map[string]any) { m["v"] = 2 }), ErrUnknownSchema},
		{"no version", mutateWorker(func(m map[string]any) { delete(m, "v") }), ErrUnknownSchema},
		{"invalid worker id", mutateWorker(func(m map[string]any) { m["worker_id"] = "a.b" }), ErrInvalid},
		{"unknown status", mutateWorker(func(m map[string]any) { m["status"] = "dancing" }), ErrInvalid},
		{"unknown health", mutateWorker(func(m map[string]any) { m["health"] = "fine" }), ErrInvalid},
		{"negative seq", mutateWorker(func(m map[string]any) { m["seq"] = -1 }), ErrInvalid},
		{"trailing bytes", append(mutateWorker(func(map[string]any) {}), 0x01), ErrUndecodable},
		{"seq zero", mutateWorker(func(m map[string]any) { m["seq"] = 0 }), ErrInvalid},
		{"no instance", mutateWorker(func(m map[string]any) { m["instance_id"] = "" }), ErrInvalid},
		{"busy over total", mutateWorker(func(m map[string]any) { m["slots_busy"] = 9 }), ErrInvalid},
		{"interval zero", mutateWorker(func(m map[string]any) { m["interval_ms"] = 0 }), ErrInvalid},
		{"long model", mutateWorker(func(m map[string]any) { m["model_id"] = strings.Repeat("m", 300) }), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := DecodeWorker(tt.data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("DecodeWorker err = %v, want %v", err, tt.want)
			}
			if w != nil {
				t.Fatal("a rejected payload returned a value")
			}
		})
	}
}

func TestHiveValidate(t *testing.T) {
	tests := []struct {
		name string
		f    func(h *Hive)
	}{
		{"cpu over 100", func(h *Hive) { h.CPUPercent = 101 }},
		{"ram used over total", func(h *Hive) { h.RAMUsedBytes = h.RAMTotalBytes + 1 }},
		{"bad worker id", func(h *Hive) { h.Workers[0].WorkerID = "" }},
		{"bad worker status", func(h *Hive) { h.Workers[0].Status = "x" }},
		{"vram over total", func(h *Hive) { h.GPUs[0].VRAMUsedBytes = ptr[uint64](81 << 30) }},
		{"util over 100", func(h *Hive) { h.GPUs[0].UtilPercent = ptr(101.0) }},
		{"too many gpus", func(h *Hive) { h.GPUs = make([]GPU, MaxGPUs+1) }},
		{"bad hive id", func(h *Hive) { h.HiveID = "a b" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := sampleHive()
			tt.f(&h)
			b, _ := Marshal(&h)
			if _, err := DecodeHive(b); !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestDecodeAny(t *testing.T) {
	w := sampleWorker()
	b, _ := Marshal(&w)
	v, err := DecodeAny(b)
	if err != nil {
		t.Fatal(err)
	}
	if v.(map[string]any)["worker_id"] != "llama-0" {
		t.Fatalf("DecodeAny = %v", v)
	}
	if _, err := DecodeAny(append(b, 0x01)); !errors.Is(err, ErrUndecodable) {
		t.Fatalf("trailing bytes: %v", err)
	}
	if _, err := DecodeAny([]byte{0xc1}); !errors.Is(err, ErrUndecodable) {
		t.Fatalf("never-used byte: %v", err)
	}
	v, err = DecodeAny([]byte{0x81, 0x01, 0x02}) // {1: 2}
	if err != nil || v.(map[string]any)["1"] == nil {
		t.Fatalf("int-keyed map: %v %v", v, err)
	}
}

func mutateHive(f func(m map[string]any)) []byte {
	h := sampleHive()
	b, _ := Marshal(&h)
	var m map[string]any
	_ = msgpack.Unmarshal(b, &m)
	f(m)
	b, _ = msgpack.Marshal(m)
	return b
}

// TestAcceptedInputs holds the decoders to the reading rules of docs/wire.md
// ("Encoding"): nil reads as absent, integers are accepted for floats, the
// reverse is a wrong type, and range and length limits are invalid.
func TestAcceptedInputs(t *testing.T) {
	gpu0 := func(m map[string]any) map[string]any { return m["gpus"].([]any)[0].(map[string]any) }
	tests := []struct {
		name  string
		data  []byte
		want  error              // nil: accepted
		check func(h *Hive) bool // for accepted hives
	}{
		{"nil optional float", mutateHive(func(m map[string]any) { gpu0(m)["power_w"] = nil }), nil,
			func(h *Hive) bool { return h.GPUs[0].PowerW == nil }},
		{"nil required string", mutateHive(func(m map[string]any) { m["hostname"] = nil }), nil,
			func(h *Hive) bool { return h.Hostname == "" }},
		{"nil required uint", mutateHive(func(m map[string]any) { m["ram_used_bytes"] = nil }), nil,
			func(h *Hive) bool { return h.RAMUsedBytes == 0 }},
		{"nil bool", mutateHive(func(m map[string]any) { m["stats_stale"] = nil }), nil,
			func(h *Hive) bool { return !h.StatsStale }},
		{"nil array", mutateHive(func(m map[string]any) { m["gpus"] = nil }), nil,
			func(h *Hive) bool { return len(h.GPUs) == 0 }},
		{"nil in a gpu record", mutateHive(func(m map[string]any) { gpu0(m)["uuid"] = nil; gpu0(m)["xid"] = nil }), nil,
			func(h *Hive) bool { return h.GPUs[0].UUID == "" && h.GPUs[0].Xid == nil }},
		{"int for float", mutateHive(func(m map[string]any) { m["cpu_percent"] = 12; gpu0(m)["util_percent"] = uint64(87) }), nil,
			func(h *Hive) bool { return h.CPUPercent == 12 && *h.GPUs[0].UtilPercent == 87 }},
		{"negative int for float", mutateHive(func(m map[string]any) { gpu0(m)["temperature_c"] = -5 }), nil,
			func(h *Hive) bool { return *h.GPUs[0].TemperatureC == -5 }},
		{"float32 for float", mutateHive(func(m map[string]any) { m["cpu_percent"] = float32(12.5) }), nil,
			func(h *Hive) bool { return h.CPUPercent == 12.5 }},
		{"signed format for uint", mutateHive(func(m map[string]any) { m["ram_total_bytes"] = int64(9 << 30) }), nil,
			func(h *Hive) bool { return h.RAMTotalBytes == 9<<30 }},
		{"unknown nested key", mutateHive(func(m map[string]any) { m["future"] = map[string]any{"a": []any{1, nil}} }), nil, nil},
		{"float for int", mutateHive(func(m map[string]any) { gpu0(m)["index"] = 1.0 }), ErrBadType, nil},
		{"string for float", mutateHive(func(m map[string]any) { m["cpu_percent"] = "12" }), ErrBadType, nil},
		{"bin for string", mutateHive(func(m map[string]any) { m["hostname"] = []byte("node1") }), ErrBadType, nil},
		{"negative uint", mutateHive(func(m map[string]any) { m["ram_used_bytes"] = -1 }), ErrInvalid, nil},
		{"uint64 beyond int", mutateHive(func(m map[string]any) { gpu0(m)["index"] = uint64(1 << 63) }), ErrInvalid, nil},
		{"too many gpus", mutateHive(func(m map[string]any) {
			m["gpus"] = make([]any, MaxGPUs+1)
		}), ErrInvalid, nil},
		{"huge declared gpus", append([]byte{0x81, 0xa4, 'g', 'p', 'u', 's'}, 0xdd, 0x7f, 0xff, 0xff, 0xff), ErrUndecodable, nil},
		{"nested past MaxDepth", append(append([]byte{0x81, 0xa1, 'x'}, bytes.Repeat([]byte{0x91}, MaxDepth)...), 0xc0), ErrUndecodable, nil},
		{"valid beat, unknown key past MaxDepth", mutateHive(func(m map[string]any) {
			var v any = 1
			for range MaxDepth + 8 {
				v = []any{v}
			}
			m["future"] = v
		}), nil, nil},
		{"invalid beat, unknown key past MaxDepth", mutateHive(func(m map[string]any) {
			var v any = 1
			for range MaxDepth + 8 {
				v = []any{v}
			}
			m["future"] = v
			m["cpu_percent"] = 101
		}), ErrUndecodable, nil},
		{"invalid beat, well formed", mutateHive(func(m map[string]any) { m["cpu_percent"] = 101 }), ErrInvalid, nil},
		{"nested to MaxDepth", mutateHive(func(m map[string]any) {
			var v any = 1
			for range MaxDepth - 1 {
				v = []any{v}
			}
			m["future"] = v
		}), nil, nil},
		{"huge declared string", []byte{0x81, 0xa8, 'h', 'o', 's', 't', 'n', 'a', 'm', 'e', 0xdb, 0x7f, 0xff, 0xff, 0xff}, ErrUndecodable, nil},
		{"truncated nested", mutateHive(func(map[string]any) {})[:300], ErrUndecodable, nil},
		{"reserved byte", []byte{0x81, 0xa1, 'v', 0xc1}, ErrUndecodable, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := DecodeHive(tt.data)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tt.check != nil && !tt.check(h) {
				t.Fatalf("decoded %+v", h)
			}
		})
	}
}

func TestMarshalIntegralFloat(t *testing.T) {
	for _, tt := range []struct {
		f    float64
		want []byte
	}{
		{61, []byte{0x3d}},
		{-5, []byte{0xfb}},
		{0.5, []byte{0xcb, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0}},
		{1 << 63, []byte{0xcb, 0x43, 0xe0, 0, 0, 0, 0, 0, 0}}, // beyond int64: a float
	} {
		f := mpFloat64(tt.f)
		got, _ := f.MarshalMsg(nil)
		if !bytes.Equal(got, tt.want) {
			t.Errorf("%v: %x, want %x", tt.f, got, tt.want)
		}
		var back mpFloat64
		if _, err := back.UnmarshalMsg(got); err != nil || float64(back) != tt.f {
			t.Errorf("%v: read back %v, %v", tt.f, back, err)
		}
	}
}

func TestMarshalUnknownType(t *testing.T) {
	if _, err := Marshal(map[string]any{"v": 1}); err == nil {
		t.Fatal("Marshal of a type without a generated codec succeeded")
	}
}

func TestQueenAndEventRoundTrip(t *testing.T) {
	q := goldenQueenEntry()
	b, _ := Marshal(&q)
	got, err := DecodeQueenEntry(b)
	if err != nil || !reflect.DeepEqual(*got, q) {
		t.Fatalf("queen entry: %v %+v", err, got)
	}
	if _, err := DecodeQueen(b); err != nil {
		t.Fatalf("queen entry as beat: %v", err)
	}
	e := goldenEvent()
	b, _ = Marshal(&e)
	if got, err := DecodeEvent(b); err != nil || !reflect.DeepEqual(*got, e) {
		t.Fatalf("event: %v %+v", err, got)
	}
}

// TestDecodeLimitsMatchValidate holds the msgp limits in the struct tags to
// the limits Validate enforces, so that both refuse the same lengths.
func TestDecodeLimitsMatchValidate(t *testing.T) {
	for _, tt := range []struct {
		typ   reflect.Type
		field string
		want  int
	}{
		{reflect.TypeFor[Hive](), "GPUs", MaxGPUs},
		{reflect.TypeFor[Hive](), "Workers", MaxHiveWorkers},
		{reflect.TypeFor[HiveWorker](), "GPUUUIDs", MaxGPUs},
	} {
		f, _ := tt.typ.FieldByName(tt.field)
		if tag, want := f.Tag.Get("msg"), fmt.Sprintf("limit=%d", tt.want); !strings.Contains(tag, want) {
			t.Errorf("%s.%s: msg tag %q lacks %s", tt.typ.Name(), tt.field, tag, want)
		}
	}
	h := sampleHive()
	h.GPUs = make([]GPU, MaxGPUs)
	for i := range h.GPUs {
		h.GPUs[i] = GPU{Index: i, UUID: "u", Name: "n"}
	}
	b, _ := Marshal(&h)
	if _, err := DecodeHive(b); err != nil {
		t.Fatalf("%d gpus refused: %v", MaxGPUs, err)
	}
	h.GPUs = append(h.GPUs, GPU{})
	b, _ = Marshal(&h)
	if _, err := DecodeHive(b); !errors.Is(err, ErrInvalid) {
		t.Fatalf("%d gpus: %v, want ErrInvalid", MaxGPUs+1, err)
	}
}

func TestHiveEmptyArraysStayEmpty(t *testing.T) {
	h := sampleHive()
	h.GPUs, h.Workers = nil, nil
	b, _ := Marshal(&h)
	got, err := DecodeHive(b)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(got)
	if !strings.Contains(string(js), `"gpus":[]`) || !strings.Contains(string(js), `"workers":[]`) {
		t.Fatalf("JSON of a hive without GPUs and workers: %s", js)
	}
	e := HiveEntry{Hive: h}
	b, _ = Marshal(&e)
	if ge, err := DecodeHiveEntry(b); err != nil || ge.GPUs == nil || ge.Workers == nil {
		t.Fatalf("entry: %v %+v", err, ge)
	}
}
