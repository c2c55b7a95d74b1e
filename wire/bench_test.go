package wire

import (
	"fmt"
	"testing"
)

// The payloads below are the ones go run ./bench measures: a worker of an
// 8-GPU hive and a hive with 8 H100s and 8 workers.

func benchWorker(i int) Worker {
	hive := i / 8
	models := []string{"meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3", "google/gemma-2-9b-it"}
	w := Worker{
		Meta: Meta{
			V:          SchemaVersion,
			InstanceID: fmt.Sprintf("%016x%016x", uint64(i)*0x9e3779b97f4a7c15, uint64(hive)*0xbf58476d1ce4e5b9),
			Seq:        1 << 31,
			SentAtMs:   1767225600000,
			IntervalMs: 30000,
			Health:     Healthy,
		},
		HiveID:     fmt.Sprintf("gpu-node-%05d", hive),
		WorkerID:   fmt.Sprintf("llm-%d", i%8),
		Status:     StatusReady,
		ModelID:    models[hive%len(models)],
		Device:     fmt.Sprintf("cuda:%d", i%8),
		URL:        fmt.Sprintf("http://10.%d.%d.%d:9000", hive>>16&255, hive>>8&255, hive&255),
		Version:    "0.4.2",
		SlotsTotal: 8,
		SlotsBusy:  i % 9 % 8,
	}
	if i%3 == 0 {
		w.Status = StatusBusy
	}
	return w
}

func benchHive() Hive {
	const vram = 85520809984
	h := Hive{
		Meta: Meta{V: SchemaVersion, InstanceID: "5f0c2a9be4d1437a8c6e0b2d4f6a8c0e", Seq: 1 << 31,
			SentAtMs: 1767225600000, IntervalMs: 30000, Health: Healthy},
		HiveID:           "gpu-node-00042",
		Hostname:         "gpu-node-00042.dc1.example.net",
		Version:          "0.4.2",
		CPUPercent:       23.5,
		RAMUsedBytes:     412316860416,
		RAMTotalBytes:    2164663517184,
		HostTemperatureC: ptr(48.0),
		StatsAgeMs:       120,
	}
	for g := range 8 {
		h.GPUs = append(h.GPUs, GPU{
			Index:          g,
			UUID:           fmt.Sprintf("GPU-5c1b7f3a-9d2e-4c6b-8a1f-%012d", g),
			Name:           "NVIDIA H100 80GB HBM3",
			VRAMUsedBytes:  ptr(71940702208 - uint64(g)*1<<30),
			VRAMTotalBytes: ptr[uint64](vram),
			UtilPercent:    ptr(float64(40 + 7*g)),
			TemperatureC:   ptr(float64(52 + g)),
			PowerW:         ptr(312.5 + float64(g)*12.25),
		})
		w := benchWorker(42*8 + g)
		h.Workers = append(h.Workers, HiveWorker{WorkerID: w.WorkerID, Status: w.Status, Health: w.Health,
			ModelID: w.ModelID, Device: w.Device, LastSeenMs: 1767225600000 - int64(g)*1000})
	}
	return h
}

func benchEntry() WorkerEntry {
	return WorkerEntry{Worker: benchWorker(42), Received: Received{ReceivedAtMs: 1767225600003, FirstSeenMs: 1767225540000, SkewMs: 3}}
}

func BenchmarkMarshal(b *testing.B) {
	w, e, h := benchWorker(42), benchEntry(), benchHive()
	for _, c := range []struct {
		name string
		v    any
	}{{"worker", &w}, {"worker_entry", &e}, {"hive", &h}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Marshal(c.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecodeWorker(b *testing.B) {
	w := benchWorker(42)
	data, err := Marshal(&w)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeWorker(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeWorkerEntry(b *testing.B) {
	e := benchEntry()
	data, err := Marshal(&e)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeWorkerEntry(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeHive(b *testing.B) {
	h := benchHive()
	data, err := Marshal(&h)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeHive(data); err != nil {
			b.Fatal(err)
		}
	}
}
