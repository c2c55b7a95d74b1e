package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// seqBase is the first seq of every fixture worker. Above 2^31 and far below
// 2^32, so msgpack's compact form is always uint32 (0xce + 4 bytes) and the
// JSON form always 10 digits: the seq can be patched in place for every round.
const seqBase = 1 << 31

// sentAtBase is a realistic Unix-ms clock: 13 digits in JSON and uint64
// (0xcf + 8 bytes) in msgpack, whatever the round.
const sentAtBase = 1767225600000

var models = []string{
	"meta-llama/Llama-3.1-8B-Instruct",
	"Qwen/Qwen2.5-7B-Instruct",
	"mistralai/Mistral-7B-Instruct-v0.3",
	"google/gemma-2-9b-it",
}

// sampleWorker returns the realistic worker beat of fixture worker i: 8
// workers per hive, one per GPU.
func sampleWorker(i int) wire.Worker {
	hive := i / 8
	w := wire.Worker{
		Meta: wire.Meta{
			V:          wire.SchemaVersion,
			InstanceID: fmt.Sprintf("%016x%016x", uint64(i)*0x9e3779b97f4a7c15, uint64(hive)*0xbf58476d1ce4e5b9),
			Seq:        seqBase,
			SentAtMs:   sentAtBase,
			IntervalMs: 30000,
			Health:     wire.Healthy,
		},
		HiveID:     fmt.Sprintf("gpu-node-%05d", hive),
		WorkerID:   fmt.Sprintf("llm-%d", i%8),
		Status:     wire.StatusReady,
		ModelID:    models[hive%len(models)],
		Device:     "cuda:" + strconv.Itoa(i%8),
		URL:        fmt.Sprintf("http://10.%d.%d.%d:9000", hive>>16&255, hive>>8&255, hive&255),
		Version:    "0.4.2",
		SlotsTotal: 8,
		SlotsBusy:  i % 9 % 8,
	}
	if i%3 == 0 {
		w.Status = wire.StatusBusy
	}
	return w
}

func fptr(f float64) *float64 { return &f }
func uptr(u uint64) *uint64   { return &u }

// sampleHive returns a realistic hive beat: 8 H100s and 8 workers.
func sampleHive() wire.Hive {
	const vram = 85520809984
	h := wire.Hive{
		Meta: wire.Meta{V: wire.SchemaVersion, InstanceID: "5f0c2a9be4d1437a8c6e0b2d4f6a8c0e", Seq: seqBase,
			SentAtMs: sentAtBase, IntervalMs: 30000, Health: wire.Healthy},
		HiveID:           "gpu-node-00042",
		Hostname:         "gpu-node-00042.dc1.example.net",
		Version:          "0.4.2",
		CPUPercent:       23.5,
		RAMUsedBytes:     412316860416,
		RAMTotalBytes:    2164663517184,
		HostTemperatureC: fptr(48),
		StatsAgeMs:       120,
	}
	for g := range 8 {
		h.GPUs = append(h.GPUs, wire.GPU{
			Index:          g,
			UUID:           fmt.Sprintf("GPU-5c1b7f3a-9d2e-4c6b-8a1f-%012d", g),
			Name:           "NVIDIA H100 80GB HBM3",
			VRAMUsedBytes:  uptr(71940702208 - uint64(g)*1<<30),
			VRAMTotalBytes: uptr(vram),
			UtilPercent:    fptr(float64(40 + 7*g)),
			TemperatureC:   fptr(float64(52 + g)),
			PowerW:         fptr(312.5 + float64(g)*12.25),
		})
		w := sampleWorker(42*8 + g)
		h.Workers = append(h.Workers, wire.HiveWorker{WorkerID: w.WorkerID, Status: w.Status, Health: w.Health,
			ModelID: w.ModelID, Device: w.Device, LastSeenMs: sentAtBase - int64(g)*1000})
	}
	return h
}

// fleet is N fixture workers with their subjects, keys and payloads in both
// encodings. Payloads are patched in place per round (seq and sent_at_ms).
type fleet struct {
	n        int
	subjects []string // rbee.hb.worker.<hive>.<worker>
	kvSubj   []string // $KV.rbee_workers.<hive>.<worker>
	keys     []string
	mp       [][]byte // msgpack payloads
	js       [][]byte // JSON payloads
	mpSeq    int      // offset of the 4 seq bytes in every msgpack payload
	mpSent   []int    // offset of the 8 sent_at_ms bytes, per payload
	jsSeq    []int    // offset of the 10 seq digits in every JSON payload
	jsSent   []int    // offset of the 13 sent_at_ms digits
	header   nats.Header
	goodbye  nats.Header
	round    uint64
	instance []string
}

// newFleet encodes n fixture workers with wire.Marshal and encoding/json and
// checks that patching works on every one.
func newFleet(n int) (*fleet, error) {
	s := subjects.Default()
	f := &fleet{
		n:        n,
		subjects: make([]string, n),
		kvSubj:   make([]string, n),
		keys:     make([]string, n),
		mp:       make([][]byte, n),
		js:       make([][]byte, n),
		mpSent:   make([]int, n),
		jsSeq:    make([]int, n),
		jsSent:   make([]int, n),
		instance: make([]string, n),
		header:   nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker}},
		goodbye: nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker},
			wire.HeaderEvent: {wire.EventGoodbye}},
		mpSeq: -1,
	}
	for i := range n {
		w := sampleWorker(i)
		f.subjects[i] = s.Worker(w.HiveID, w.WorkerID)
		f.keys[i] = subjects.WorkerKey(w.HiveID, w.WorkerID)
		f.kvSubj[i] = "$KV." + s.WorkersBucket() + "." + f.keys[i]
		f.instance[i] = w.InstanceID
		mp, err := wire.Marshal(&w)
		if err != nil {
			return nil, err
		}
		seqAt := bytes.Index(mp, []byte("\xa3seq\xce"))
		sentAt := bytes.Index(mp, []byte("\xaasent_at_ms\xcf"))
		if seqAt < 0 || sentAt < 0 {
			return nil, fmt.Errorf("fixture %d: seq or sent_at_ms not in fixed-width form", i)
		}
		if f.mpSeq < 0 {
			f.mpSeq = seqAt + 5
		} else if f.mpSeq != seqAt+5 {
			return nil, fmt.Errorf("fixture %d: seq at %d, others at %d", i, seqAt+5, f.mpSeq)
		}
		f.mp[i], f.mpSent[i] = mp, sentAt+12
		js, err := json.Marshal(&w)
		if err != nil {
			return nil, err
		}
		jsSeqAt := bytes.Index(js, []byte(`"seq":`))
		jsSentAt := bytes.Index(js, []byte(`"sent_at_ms":`))
		if jsSeqAt < 0 || jsSentAt < 0 {
			return nil, fmt.Errorf("fixture %d: seq or sent_at_ms missing in JSON", i)
		}
		f.js[i], f.jsSeq[i], f.jsSent[i] = js, jsSeqAt+6, jsSentAt+13
	}
	// Check that a patched payload decodes to what was patched in.
	f.setRound(7, sentAtBase+12345)
	for _, i := range []int{0, n / 2, n - 1} {
		w, err := wire.DecodeWorker(f.mp[i])
		if err != nil {
			return nil, fmt.Errorf("patched fixture %d: %w", i, err)
		}
		var jw wire.Worker
		if err := json.Unmarshal(f.js[i], &jw); err != nil {
			return nil, fmt.Errorf("patched JSON fixture %d: %w", i, err)
		}
		if w.Seq != seqBase+7 || w.SentAtMs != sentAtBase+12345 || jw.Seq != w.Seq || jw.SentAtMs != w.SentAtMs {
			return nil, fmt.Errorf("patched fixture %d: seq %d/%d sent %d/%d", i, w.Seq, jw.Seq, w.SentAtMs, jw.SentAtMs)
		}
	}
	f.setRound(0, sentAtBase)
	return f, nil
}

// seq returns the seq of round r.
func seqOf(r uint64) uint64 { return seqBase + r }

// setRound patches every payload to round r (seq = seqBase + r) sent at sentAtMs.
func (f *fleet) setRound(r uint64, sentAtMs int64) {
	f.round = r
	for i := range f.n {
		f.patch(i, r, sentAtMs)
	}
}

// patch sets worker i's payloads to round r sent at sentAtMs.
func (f *fleet) patch(i int, r uint64, sentAtMs int64) {
	seq := seqOf(r)
	binary.BigEndian.PutUint32(f.mp[i][f.mpSeq:], uint32(seq))
	binary.BigEndian.PutUint64(f.mp[i][f.mpSent[i]:], uint64(sentAtMs))
	putDigits(f.js[i][f.jsSeq[i]:f.jsSeq[i]+10], seq)
	putDigits(f.js[i][f.jsSent[i]:f.jsSent[i]+13], uint64(sentAtMs))
}

// putDigits writes v right-aligned in decimal into dst, which holds exactly
// as many digits as v has.
func putDigits(dst []byte, v uint64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
}

// meanSize returns the mean payload size of the msgpack and JSON forms.
func (f *fleet) meanSize() (mp, js float64) {
	var a, b int
	for i := range f.n {
		a += len(f.mp[i])
		b += len(f.js[i])
	}
	return float64(a) / float64(f.n), float64(b) / float64(f.n)
}
