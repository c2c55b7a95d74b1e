package wire

import (
	"encoding/binary"
	"math"
	"slices"
	"strings"
)

// Worker beats are the bulk of the queen's traffic: one per worker per
// interval, decoded by the queen, re-encoded with the queen's keys into the
// registry, and decoded again by every registry watcher. This file codes them
// without reflection. The decoder is a fast path only: whatever it does not
// handle exactly as the reflection decoder does (values of unexpected types,
// nested values under unknown keys, trailing bytes, truncation) it leaves to
// that decoder, so both accept the same inputs with the same results and
// errors. The encoder writes the same bytes as the reflection encoder with
// compact integers (TestWorkerCodecMatchesReflection holds both to it).

// Keys of the worker map, with their fixstr prefix, in struct order.
const (
	kV            = "\xa1v"
	kInstanceID   = "\xabinstance_id"
	kSeq          = "\xa3seq"
	kSentAtMs     = "\xaasent_at_ms"
	kIntervalMs   = "\xabinterval_ms"
	kHealth       = "\xa6health"
	kHealthReason = "\xadhealth_reason"
	kHiveID       = "\xa7hive_id"
	kWorkerID     = "\xa9worker_id"
	kStatus       = "\xa6status"
	kModelID      = "\xa8model_id"
	kDevice       = "\xa6device"
	kURL          = "\xa3url"
	kVersion      = "\xa7version"
	kSlotsTotal   = "\xabslots_total"
	kSlotsBusy    = "\xaaslots_busy"
	kReceivedAtMs = "\xaereceived_at_ms"
	kFirstSeenMs  = "\xadfirst_seen_ms"
	kSkewMs       = "\xa7skew_ms"
)

// workerFields and entryFields are the map sizes the encoder writes.
const (
	workerFields = 16
	entryFields  = workerFields + 3
)

// AppendWorkerEntry appends to dst the registry value of an accepted worker
// beat, the bytes Marshal(&WorkerEntry{Worker: *w, Received: rec}) returns,
// without copying w, and returns the extended buffer.
func AppendWorkerEntry(dst []byte, w *Worker, rec Received) []byte {
	return appendWorker(slices.Grow(dst, workerSize(w, &rec)), w, &rec)
}

// appendWorker appends the msgpack map of w, plus rec's keys if rec is not
// nil, exactly as the reflection encoder with compact integers writes it.
func appendWorker(b []byte, w *Worker, rec *Received) []byte {
	if rec == nil {
		b = appendMapLen(b, workerFields)
	} else {
		b = appendMapLen(b, entryFields)
	}
	b = appendInt(append(b, kV...), int64(w.V))
	b = appendStr(append(b, kInstanceID...), w.InstanceID)
	b = appendUint(append(b, kSeq...), w.Seq)
	b = appendInt(append(b, kSentAtMs...), w.SentAtMs)
	b = appendInt(append(b, kIntervalMs...), w.IntervalMs)
	b = appendStr(append(b, kHealth...), string(w.Health))
	b = appendStr(append(b, kHealthReason...), w.HealthReason)
	b = appendStr(append(b, kHiveID...), w.HiveID)
	b = appendStr(append(b, kWorkerID...), w.WorkerID)
	b = appendStr(append(b, kStatus...), string(w.Status))
	b = appendStr(append(b, kModelID...), w.ModelID)
	b = appendStr(append(b, kDevice...), w.Device)
	b = appendStr(append(b, kURL...), w.URL)
	b = appendStr(append(b, kVersion...), w.Version)
	b = appendInt(append(b, kSlotsTotal...), int64(w.SlotsTotal))
	b = appendInt(append(b, kSlotsBusy...), int64(w.SlotsBusy))
	if rec != nil {
		b = appendInt(append(b, kReceivedAtMs...), rec.ReceivedAtMs)
		b = appendInt(append(b, kFirstSeenMs...), rec.FirstSeenMs)
		b = appendInt(append(b, kSkewMs...), rec.SkewMs)
	}
	return b
}

// workerSize returns the encoded size of w (and rec), so that Marshal
// allocates once and exactly.
func workerSize(w *Worker, rec *Received) int {
	n := 3 + len(kV+kInstanceID+kSeq+kSentAtMs+kIntervalMs+kHealth+kHealthReason+kHiveID+kWorkerID+
		kStatus+kModelID+kDevice+kURL+kVersion+kSlotsTotal+kSlotsBusy) +
		intSize(int64(w.V)) + uintSize(w.Seq) + intSize(w.SentAtMs) + intSize(w.IntervalMs) +
		intSize(int64(w.SlotsTotal)) + intSize(int64(w.SlotsBusy)) +
		strSize(w.InstanceID) + strSize(string(w.Health)) + strSize(w.HealthReason) + strSize(w.HiveID) +
		strSize(w.WorkerID) + strSize(string(w.Status)) + strSize(w.ModelID) + strSize(w.Device) +
		strSize(w.URL) + strSize(w.Version)
	if rec != nil {
		n += len(kReceivedAtMs+kFirstSeenMs+kSkewMs) + intSize(rec.ReceivedAtMs) + intSize(rec.FirstSeenMs) + intSize(rec.SkewMs)
	}
	return n
}

func strSize(s string) int {
	switch n := len(s); {
	case n < 32:
		return 1 + n
	case n < 256:
		return 2 + n
	case n <= math.MaxUint16:
		return 3 + n
	default:
		return 5 + n
	}
}

func uintSize(n uint64) int {
	switch {
	case n <= math.MaxInt8:
		return 1
	case n <= math.MaxUint8:
		return 2
	case n <= math.MaxUint16:
		return 3
	case n <= math.MaxUint32:
		return 5
	}
	return 9
}

func intSize(n int64) int {
	switch {
	case n >= 0:
		return uintSize(uint64(n))
	case n >= -32:
		return 1
	case n >= math.MinInt8:
		return 2
	case n >= math.MinInt16:
		return 3
	case n >= math.MinInt32:
		return 5
	}
	return 9
}

func appendMapLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		return append(b, 0xde, byte(n>>8), byte(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdf), uint32(n))
}

func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 256:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = append(b, 0xda, byte(n>>8), byte(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

func appendUint(b []byte, n uint64) []byte {
	switch {
	case n <= math.MaxInt8:
		return append(b, byte(n))
	case n <= math.MaxUint8:
		return append(b, 0xcc, byte(n))
	case n <= math.MaxUint16:
		return append(b, 0xcd, byte(n>>8), byte(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), n)
}

func appendInt(b []byte, n int64) []byte {
	switch {
	case n >= 0:
		return appendUint(b, uint64(n))
	case n >= -32:
		return append(b, byte(n))
	case n >= math.MinInt8:
		return append(b, 0xd0, byte(n))
	case n >= math.MinInt16:
		return append(b, 0xd1, byte(n>>8), byte(n))
	case n >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(n))
}

// fastReader reads msgpack for the fast path. Any read it cannot serve
// clears ok, and the caller falls back to the reflection decoder.
type fastReader struct {
	b  []byte
	i  int
	ok bool
}

func (r *fastReader) code() byte {
	if r.i >= len(r.b) {
		r.ok = false
		return 0xc1 // never used by msgpack
	}
	c := r.b[r.i]
	r.i++
	return c
}

// take returns the next n bytes.
func (r *fastReader) take(n int) []byte {
	if n < 0 || len(r.b)-r.i < n {
		r.ok = false
		r.i = len(r.b)
		return nil
	}
	s := r.b[r.i : r.i+n]
	r.i += n
	return s
}

func (r *fastReader) be(n int) uint64 {
	var v uint64
	for _, c := range r.take(n) {
		v = v<<8 | uint64(c)
	}
	return v
}

func (r *fastReader) mapLen() int {
	c := r.code()
	switch {
	case c&0xf0 == 0x80:
		return int(c & 0x0f)
	case c == 0xde:
		return int(r.be(2))
	case c == 0xdf:
		return int(r.be(4))
	}
	r.ok = false
	return 0
}

// span is a string value as offsets into the input.
type span struct{ start, end int32 }

// str reads a str, bin or nil value (all of which the reflection decoder
// reads into a string) and returns where its bytes are.
func (r *fastReader) str() span {
	c := r.code()
	var n int
	switch {
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == 0xc0:
		return span{int32(r.i), int32(r.i)}
	case c == 0xd9 || c == 0xc4:
		n = int(r.be(1))
	case c == 0xda || c == 0xc5:
		n = int(r.be(2))
	case c == 0xdb || c == 0xc6:
		n = int(r.be(4))
	default:
		r.ok = false
		return span{}
	}
	start := r.i
	r.take(n)
	return span{int32(start), int32(r.i)}
}

// int reads an integer or nil as the reflection decoder reads it into an int64.
func (r *fastReader) int() int64 {
	c := r.code()
	switch {
	case c <= 0x7f || c >= 0xe0:
		return int64(int8(c))
	case c == 0xc0:
		return 0
	case c == 0xcc:
		return int64(r.be(1))
	case c == 0xd0:
		return int64(int8(r.be(1)))
	case c == 0xcd:
		return int64(r.be(2))
	case c == 0xd1:
		return int64(int16(r.be(2)))
	case c == 0xce:
		return int64(r.be(4))
	case c == 0xd2:
		return int64(int32(r.be(4)))
	case c == 0xcf || c == 0xd3:
		return int64(r.be(8))
	}
	r.ok = false
	return 0
}

// uint reads an integer or nil as the reflection decoder reads it into a
// uint64: signed values are sign-extended, as there.
func (r *fastReader) uint() uint64 { return uint64(r.int()) }

// skip steps over a scalar value under a key the struct does not have.
func (r *fastReader) skip() {
	c := r.code()
	switch {
	case c <= 0x7f || c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
	case c&0xe0 == 0xa0, c == 0xd9, c == 0xda, c == 0xdb, c == 0xc4, c == 0xc5, c == 0xc6:
		r.i--
		r.str()
	case c == 0xcc || c == 0xd0:
		r.take(1)
	case c == 0xcd || c == 0xd1:
		r.take(2)
	case c == 0xce || c == 0xd2 || c == 0xca:
		r.take(4)
	case c == 0xcf || c == 0xd3 || c == 0xcb:
		r.take(8)
	default: // maps, arrays, extensions: the reflection decoder skips those
		r.ok = false
	}
}

// Indexes of the worker's string fields in decodeWorkerFast's spans.
const (
	sInstanceID = iota
	sHealth
	sHealthReason
	sHiveID
	sWorkerID
	sStatus
	sModelID
	sDevice
	sURL
	sVersion
	nWorkerStrings
)

// decodeWorkerFast decodes data into w (and the queen's keys into rec when
// rec is not nil). It returns false, with w and rec in any state, when the
// reflection decoder must decide.
func decodeWorkerFast(data []byte, w *Worker, rec *Received) bool {
	r := fastReader{b: data, ok: true}
	n := r.mapLen()
	var spans [nWorkerStrings]span
	for i := 0; i < n && r.ok; i++ {
		k := r.str()
		if !r.ok {
			return false
		}
		switch string(data[k.start:k.end]) {
		case "v":
			w.V = int(r.int())
		case "instance_id":
			spans[sInstanceID] = r.str()
		case "seq":
			w.Seq = r.uint()
		case "sent_at_ms":
			w.SentAtMs = r.int()
		case "interval_ms":
			w.IntervalMs = r.int()
		case "health":
			spans[sHealth] = r.str()
		case "health_reason":
			spans[sHealthReason] = r.str()
		case "hive_id":
			spans[sHiveID] = r.str()
		case "worker_id":
			spans[sWorkerID] = r.str()
		case "status":
			spans[sStatus] = r.str()
		case "model_id":
			spans[sModelID] = r.str()
		case "device":
			spans[sDevice] = r.str()
		case "url":
			spans[sURL] = r.str()
		case "version":
			spans[sVersion] = r.str()
		case "slots_total":
			w.SlotsTotal = int(r.int())
		case "slots_busy":
			w.SlotsBusy = int(r.int())
		case "received_at_ms", "first_seen_ms", "skew_ms":
			if rec == nil {
				r.skip()
				break
			}
			v := r.int()
			switch data[k.start] {
			case 'r':
				rec.ReceivedAtMs = v
			case 'f':
				rec.FirstSeenMs = v
			default:
				rec.SkewMs = v
			}
		default:
			r.skip()
		}
	}
	if !r.ok || r.i != len(data) {
		return false
	}
	// One allocation holds every string that is not a known constant.
	var sb strings.Builder
	size := 0
	for _, s := range spans {
		size += int(s.end - s.start)
	}
	sb.Grow(size)
	var at [nWorkerStrings][2]int
	var known [nWorkerStrings]string
	for i, s := range spans {
		v := data[s.start:s.end]
		if c, ok := constant(v); ok {
			known[i] = c
			at[i] = [2]int{-1, -1}
			continue
		}
		at[i][0] = sb.Len()
		sb.Write(v)
		at[i][1] = sb.Len()
	}
	all := sb.String()
	str := func(i int) string {
		if at[i][0] < 0 {
			return known[i]
		}
		return all[at[i][0]:at[i][1]]
	}
	w.InstanceID = str(sInstanceID)
	w.Health = Health(str(sHealth))
	w.HealthReason = str(sHealthReason)
	w.HiveID = str(sHiveID)
	w.WorkerID = str(sWorkerID)
	w.Status = Status(str(sStatus))
	w.ModelID = str(sModelID)
	w.Device = str(sDevice)
	w.URL = str(sURL)
	w.Version = str(sVersion)
	return true
}

// constant returns the shared string for values every beat repeats (empty,
// the health and status values), so they cost no memory per entry.
func constant(b []byte) (string, bool) {
	switch string(b) {
	case "":
		return "", true
	case string(Healthy):
		return string(Healthy), true
	case string(Degraded):
		return string(Degraded), true
	case string(Unhealthy):
		return string(Unhealthy), true
	case string(StatusStarting):
		return string(StatusStarting), true
	case string(StatusReady):
		return string(StatusReady), true
	case string(StatusBusy):
		return string(StatusBusy), true
	case string(StatusDraining):
		return string(StatusDraining), true
	case string(StatusStopping):
		return string(StatusStopping), true
	case string(StatusStopped):
		return string(StatusStopped), true
	}
	return "", false
}
