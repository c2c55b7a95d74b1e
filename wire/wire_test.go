package wire

import (
	"errors"
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
