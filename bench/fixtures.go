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

// seqBase is the first seq of every fixture worker: above 2^31, so that
// msgpack never picks a narrower form and JSON always has 10 digits, and the
// seq can be patched in place for every round.
const seqBase = 1 << 31

// sentAtBase is a realistic Unix-ms clock: 13 digits in JSON, 8 bytes in msgpack.
const sentAtBase = 1767225600000

var models = []string{
	"meta-llama/Llama-3.1-8B-Instruct",
	"Qwen/Qwen2.5-7B-Instruct",
	"mistralai/Mistral-7B-Instruct-v0.3",
	"google/gemma-2-9b-it",
}

// sampleWorker returns the realistic beat of fixture worker i (8 workers per
// hive, one per GPU) at a 30 s interval.
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

// sampleHive returns a realistic hive beat: 8 GPUs with every reading, and
// a view of 8 workers.
func sampleHive() wire.Hive {
	f := func(v float64) *float64 { return &v }
	u := func(v uint64) *uint64 { return &v }
	h := wire.Hive{
		Meta: wire.Meta{V: wire.SchemaVersion, InstanceID: "5f0c2a9be4d1437a8c6e0b2d4f6a8c0e", Seq: seqBase,
			SentAtMs: sentAtBase, IntervalMs: 30000, Health: wire.Healthy},
		HiveID: "gpu-node-00042", Hostname: "gpu-node-00042.dc1.example.net", Version: "0.4.2",
		CPUPercent: 23.5, RAMUsedBytes: 412316860416, RAMTotalBytes: 2164663517184, HostTemperatureC: f(48), StatsAgeMs: 120,
	}
	for g := range 8 {
		h.GPUs = append(h.GPUs, wire.GPU{Index: g, UUID: fmt.Sprintf("GPU-5c1b7f3a-9d2e-4c6b-8a1f-%012d", g),
			Name: "NVIDIA H100 80GB HBM3", VRAMUsedBytes: u(71940702208 - uint64(g)<<30), VRAMTotalBytes: u(85520809984),
			UtilPercent: f(float64(40 + 7*g)), TemperatureC: f(float64(52 + g)), PowerW: f(312.5 + float64(g)*12.25)})
		w := sampleWorker(42*8 + g)
		h.Workers = append(h.Workers, wire.HiveWorker{WorkerID: w.WorkerID, Status: w.Status, Health: w.Health,
			ModelID: w.ModelID, Device: w.Device, LastSeenMs: sentAtBase - int64(g)*1000})
	}
	return h
}

// fleet is n fixture workers with their subjects and payloads in both
// encodings, patched in place per round (seq, sent_at_ms and slots_busy),
// so that every beat is fresh and a change without being encoded again.
type fleet struct {
	n        int
	subjects []string // rbee.hb.worker.<hive>.<worker>
	kvSubj   []string // $KV.rbee_workers.<hive>.<worker>
	keys     []string
	mp, js   [][]byte
	// Where seq and sent_at_ms sit in each payload, and how wide the
	// msgpack integers are (4 or 8 bytes); where slots_busy's one byte
	// (a msgpack fixint, a JSON digit) sits.
	mpSeq, mpSent, jsSeq, jsSent []int
	mpBusy, jsBusy               []int
	seqW, sentW                  int
	header                       nats.Header
}

// newFleet encodes n fixture workers with wire.Marshal and encoding/json
// (TestFleetPatch checks that patching works).
func newFleet(n int) (*fleet, error) {
	s := subjects.Default()
	f := &fleet{n: n, header: nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker}}}
	for i := range n {
		w := sampleWorker(i)
		key := subjects.WorkerKey(w.HiveID, w.WorkerID)
		mp, err := wire.Marshal(&w)
		if err != nil {
			return nil, err
		}
		js, err := json.Marshal(&w)
		if err != nil {
			return nil, err
		}
		seqAt, seqW := intAt(mp, "\xa3seq")
		sentAt, sentW := intAt(mp, "\xaasent_at_ms")
		jsSeq, jsSent := bytes.Index(js, []byte(`"seq":`)), bytes.Index(js, []byte(`"sent_at_ms":`))
		if seqW == 0 || sentW == 0 || jsSeq < 0 || jsSent < 0 || f.seqW != 0 && (seqW != f.seqW || sentW != f.sentW) {
			return nil, fmt.Errorf("fixture %d: seq or sent_at_ms not in a fixed-width form", i)
		}
		mpBusy, jsBusy := bytes.Index(mp, []byte("\xaaslots_busy")), bytes.Index(js, []byte(`"slots_busy":`))
		if mpBusy < 0 || jsBusy < 0 || mp[mpBusy+11] > 7 || js[jsBusy+13] < '0' || js[jsBusy+13] > '7' {
			return nil, fmt.Errorf("fixture %d: slots_busy not one byte", i)
		}
		f.mpBusy, f.jsBusy = append(f.mpBusy, mpBusy+11), append(f.jsBusy, jsBusy+13)
		f.seqW, f.sentW = seqW, sentW
		f.subjects = append(f.subjects, s.Worker(w.HiveID, w.WorkerID))
		f.kvSubj = append(f.kvSubj, "$KV."+s.WorkersBucket()+"."+key)
		f.keys = append(f.keys, key)
		f.mp, f.js = append(f.mp, mp), append(f.js, js)
		f.mpSeq, f.mpSent = append(f.mpSeq, seqAt), append(f.mpSent, sentAt)
		f.jsSeq, f.jsSent = append(f.jsSeq, jsSeq+6), append(f.jsSent, jsSent+13)
	}
	return f, nil
}

// intAt returns the offset of the integer value after the msgpack key k and
// its width in bytes; width 0 if it is not a 4- or 8-byte integer.
func intAt(mp []byte, k string) (int, int) {
	i := bytes.Index(mp, []byte(k))
	if i < 0 || i+len(k) >= len(mp) {
		return 0, 0
	}
	i += len(k)
	switch mp[i] {
	case 0xce, 0xd2:
		return i + 1, 4
	case 0xcf, 0xd3:
		return i + 1, 8
	}
	return 0, 0
}

// seqOf returns the seq of round r.
func seqOf(r uint64) uint64 { return seqBase + r }

// busyOf returns worker i's slots_busy in round r: another in every round.
func busyOf(i int, r uint64) int { return int((uint64(i) + r) % 8) }

// patch sets worker i's payloads to round r sent at sentAtMs, with the
// round's slots_busy, so that each round's beat changes what a reader sees.
func (f *fleet) patch(i int, r uint64, sentAtMs int64) {
	busy := byte(busyOf(i, r))
	f.mp[i][f.mpBusy[i]] = busy
	f.js[i][f.jsBusy[i]] = '0' + busy
	putInt(f.mp[i][f.mpSeq[i]:], f.seqW, seqOf(r))
	putInt(f.mp[i][f.mpSent[i]:], f.sentW, uint64(sentAtMs))
	putDigits(f.js[i][f.jsSeq[i]:f.jsSeq[i]+10], seqOf(r))
	putDigits(f.js[i][f.jsSent[i]:f.jsSent[i]+13], uint64(sentAtMs))
}

func putInt(dst []byte, width int, v uint64) {
	if width == 4 {
		binary.BigEndian.PutUint32(dst, uint32(v))
	} else {
		binary.BigEndian.PutUint64(dst, v)
	}
}

// putDigits writes v in decimal into dst, which holds exactly as many digits.
func putDigits(dst []byte, v uint64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
}

// meanSize returns the mean payload size in msgpack and in JSON.
func (f *fleet) meanSize() (mp, js float64) {
	var a, b int
	for i := range f.n {
		a, b = a+len(f.mp[i]), b+len(f.js[i])
	}
	return float64(a) / float64(f.n), float64(b) / float64(f.n)
}
