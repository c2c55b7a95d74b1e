package wire

import (
	"encoding/binary"
	"math"
	"strings"
)

// Hive beats carry every GPU and worker of a machine: the reflection codec
// spends ~100 allocations on one. This file codes them by hand on the terms
// of worker_codec.go: the encoder writes the reflection encoder's bytes, and
// the decoder leaves anything it does not handle exactly as that decoder does
// (nested values under unknown keys, a repeated gpus or workers key, array
// elements that are not maps, more GPUs or workers than a valid beat holds)
// to it.

func appendFloat(b []byte, f float64) []byte {
	if float64(int64(f)) == f { // compact floats: integral values as integers
		return appendInt(b, int64(f))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcb), math.Float64bits(f))
}

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return append(b, 0xdc, byte(n>>8), byte(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xc3)
	}
	return append(b, 0xc2)
}

func appendMeta(b []byte, m *Meta) []byte {
	b = appendInt(append(b, kV...), int64(m.V))
	b = appendStr(append(b, kInstanceID...), m.InstanceID)
	b = appendUint(append(b, kSeq...), m.Seq)
	b = appendInt(append(b, kSentAtMs...), m.SentAtMs)
	b = appendInt(append(b, kIntervalMs...), m.IntervalMs)
	b = appendStr(append(b, kHealth...), string(m.Health))
	return appendStr(append(b, kHealthReason...), m.HealthReason)
}

func appendReceived(b []byte, rec *Received) []byte {
	b = appendInt(append(b, kReceivedAtMs...), rec.ReceivedAtMs)
	b = appendInt(append(b, kFirstSeenMs...), rec.FirstSeenMs)
	return appendInt(append(b, kSkewMs...), rec.SkewMs)
}

// appendHive appends the msgpack map of h, plus rec's keys if rec is not nil,
// exactly as the reflection encoder with compact integers and floats writes it.
func appendHive(b []byte, h *Hive, rec *Received) []byte {
	n := 7 + 8
	if h.HostTemperatureC != nil {
		n++
	}
	if h.StatsStale {
		n++
	}
	if h.StatsAgeMs != 0 {
		n++
	}
	if rec != nil {
		n += 3
	}
	b = appendMapLen(b, n)
	b = appendMeta(b, &h.Meta)
	b = appendStr(append(b, "\xa7hive_id"...), h.HiveID)
	b = appendStr(append(b, "\xa8hostname"...), h.Hostname)
	b = appendStr(append(b, kVersion...), h.Version)
	b = appendFloat(append(b, "\xabcpu_percent"...), h.CPUPercent)
	b = appendUint(append(b, "\xaeram_used_bytes"...), h.RAMUsedBytes)
	b = appendUint(append(b, "\xafram_total_bytes"...), h.RAMTotalBytes)
	if h.HostTemperatureC != nil {
		b = appendFloat(append(b, "\xb2host_temperature_c"...), *h.HostTemperatureC)
	}
	if h.StatsStale {
		b = appendBool(append(b, "\xabstats_stale"...), true)
	}
	if h.StatsAgeMs != 0 {
		b = appendInt(append(b, "\xacstats_age_ms"...), h.StatsAgeMs)
	}
	b = append(b, "\xa4gpus"...)
	if h.GPUs == nil {
		b = append(b, 0xc0)
	} else {
		b = appendArrayLen(b, len(h.GPUs))
		for i := range h.GPUs {
			b = appendGPU(b, &h.GPUs[i])
		}
	}
	b = append(b, "\xa7workers"...)
	if h.Workers == nil {
		b = append(b, 0xc0)
	} else {
		b = appendArrayLen(b, len(h.Workers))
		for i := range h.Workers {
			w := &h.Workers[i]
			b = append(b, 0x86)
			b = appendStr(append(b, kWorkerID...), w.WorkerID)
			b = appendStr(append(b, kStatus...), string(w.Status))
			b = appendStr(append(b, kHealth...), string(w.Health))
			b = appendStr(append(b, kModelID...), w.ModelID)
			b = appendStr(append(b, kDevice...), w.Device)
			b = appendInt(append(b, "\xaclast_seen_ms"...), w.LastSeenMs)
		}
	}
	if rec != nil {
		b = appendReceived(b, rec)
	}
	return b
}

func appendGPU(b []byte, g *GPU) []byte {
	n := 3
	for _, set := range []bool{g.VRAMUsedBytes != nil, g.VRAMTotalBytes != nil, g.UtilPercent != nil,
		g.TemperatureC != nil, g.PowerW != nil, g.Health != "", g.HealthReason != ""} {
		if set {
			n++
		}
	}
	b = appendMapLen(b, n)
	b = appendInt(append(b, "\xa5index"...), int64(g.Index))
	b = appendStr(append(b, "\xa4uuid"...), g.UUID)
	b = appendStr(append(b, "\xa4name"...), g.Name)
	if g.VRAMUsedBytes != nil {
		b = appendUint(append(b, "\xafvram_used_bytes"...), *g.VRAMUsedBytes)
	}
	if g.VRAMTotalBytes != nil {
		b = appendUint(append(b, "\xb0vram_total_bytes"...), *g.VRAMTotalBytes)
	}
	if g.UtilPercent != nil {
		b = appendFloat(append(b, "\xacutil_percent"...), *g.UtilPercent)
	}
	if g.TemperatureC != nil {
		b = appendFloat(append(b, "\xadtemperature_c"...), *g.TemperatureC)
	}
	if g.PowerW != nil {
		b = appendFloat(append(b, "\xa7power_w"...), *g.PowerW)
	}
	if g.Health != "" {
		b = appendStr(append(b, kHealth...), string(g.Health))
	}
	if g.HealthReason != "" {
		b = appendStr(append(b, kHealthReason...), g.HealthReason)
	}
	return b
}

// marshalHive returns the encoding of h (and rec), in one allocation for
// a typical hive.
func marshalHive(h *Hive, rec *Received) []byte {
	size := 512 + len(h.HealthReason) + 160*len(h.GPUs) + 128*len(h.Workers)
	for i := range h.GPUs {
		size += len(h.GPUs[i].UUID) + len(h.GPUs[i].Name) + len(h.GPUs[i].HealthReason)
	}
	for i := range h.Workers {
		size += len(h.Workers[i].WorkerID) + len(h.Workers[i].ModelID) + len(h.Workers[i].Device)
	}
	return appendHive(make([]byte, 0, size), h, rec)
}

// float reads a number or nil as the reflection decoder reads it into a float64.
func (r *fastReader) float() float64 {
	switch c := r.code(); c {
	case 0xca:
		return float64(math.Float32frombits(uint32(r.be(4))))
	case 0xcb:
		return math.Float64frombits(r.be(8))
	default:
		r.i--
		return float64(r.int())
	}
}

// bool reads a bool or nil as the reflection decoder does.
func (r *fastReader) bool() bool {
	switch r.code() {
	case 0xc0, 0xc2:
		return false
	case 0xc3:
		return true
	}
	r.ok = false
	return false
}

// arrayLen reads an array header; -1 for nil.
func (r *fastReader) arrayLen() int {
	c := r.code()
	switch {
	case c&0xf0 == 0x90:
		return int(c & 0x0f)
	case c == 0xdc:
		return int(r.be(2))
	case c == 0xdd:
		return int(r.be(4))
	case c == 0xc0:
		return -1
	}
	r.ok = false
	return 0
}

// isNil reports whether the next value is nil, and consumes it if so.
func (r *fastReader) isNil() bool {
	if r.i < len(r.b) && r.b[r.i] == 0xc0 {
		r.i++
		return true
	}
	return false
}

// strRef is a string value to set once all strings share one allocation.
type strRef struct {
	s      span
	str    *string
	health *Health
	status *Status
}

// hiveDecoder decodes a hive on the fast path.
type hiveDecoder struct {
	r    fastReader
	refs []strRef
	u64  []uint64 // backing of the GPUs' integer pointers
	f64  []float64
}

func (d *hiveDecoder) str(dst *string)    { d.refs = append(d.refs, strRef{s: d.r.str(), str: dst}) }
func (d *hiveDecoder) health(dst *Health) { d.refs = append(d.refs, strRef{s: d.r.str(), health: dst}) }
func (d *hiveDecoder) status(dst *Status) { d.refs = append(d.refs, strRef{s: d.r.str(), status: dst}) }

func (d *hiveDecoder) u64p() *uint64 {
	if d.r.isNil() {
		return nil
	}
	d.u64 = append(d.u64, d.r.uint())
	return &d.u64[len(d.u64)-1]
}

func (d *hiveDecoder) f64p() *float64 {
	if d.r.isNil() {
		return nil
	}
	d.f64 = append(d.f64, d.r.float())
	return &d.f64[len(d.f64)-1]
}

// key reads a map key; ok is false when the fast path must give up.
func (d *hiveDecoder) key() string {
	k := d.r.str()
	if !d.r.ok {
		return ""
	}
	return string(d.r.b[k.start:k.end]) // no allocation: only switched on
}

// decodeHiveFast decodes data into h (and the queen's keys into rec when rec
// is not nil). It returns false, with h and rec in any state, when the
// reflection decoder must decide.
func decodeHiveFast(data []byte, h *Hive, rec *Received) bool {
	var refs [96]strRef
	d := hiveDecoder{r: fastReader{b: data, ok: true}, refs: refs[:0]}
	r := &d.r
	n := r.mapLen()
	var seenGPUs, seenWorkers bool
	for i := 0; i < n && r.ok; i++ {
		switch k := d.key(); k {
		case "v":
			h.V = int(r.int())
		case "instance_id":
			d.str(&h.InstanceID)
		case "seq":
			h.Seq = r.uint()
		case "sent_at_ms":
			h.SentAtMs = r.int()
		case "interval_ms":
			h.IntervalMs = r.int()
		case "health":
			d.health(&h.Health)
		case "health_reason":
			d.str(&h.HealthReason)
		case "hive_id":
			d.str(&h.HiveID)
		case "hostname":
			d.str(&h.Hostname)
		case "version":
			d.str(&h.Version)
		case "cpu_percent":
			h.CPUPercent = r.float()
		case "ram_used_bytes":
			h.RAMUsedBytes = r.uint()
		case "ram_total_bytes":
			h.RAMTotalBytes = r.uint()
		case "host_temperature_c":
			if r.isNil() {
				h.HostTemperatureC = nil
			} else {
				f := r.float()
				h.HostTemperatureC = &f
			}
		case "stats_stale":
			h.StatsStale = r.bool()
		case "stats_age_ms":
			h.StatsAgeMs = r.int()
		case "gpus":
			if seenGPUs {
				return false
			}
			seenGPUs = true
			if !d.gpus(h) {
				return false
			}
		case "workers":
			if seenWorkers {
				return false
			}
			seenWorkers = true
			if !d.workers(h) {
				return false
			}
		case "received_at_ms", "first_seen_ms", "skew_ms":
			if rec == nil {
				r.skip()
				break
			}
			v := r.int()
			switch k[0] {
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
	var sb strings.Builder
	size := 0
	for _, ref := range d.refs {
		size += int(ref.s.end - ref.s.start)
	}
	sb.Grow(size)
	for _, ref := range d.refs {
		v := data[ref.s.start:ref.s.end]
		if _, ok := constant(v); !ok {
			sb.Write(v)
		}
	}
	all, at := sb.String(), 0
	for _, ref := range d.refs {
		v := data[ref.s.start:ref.s.end]
		s, ok := constant(v)
		if !ok {
			s = all[at : at+len(v)]
			at += len(v)
		}
		switch {
		case ref.str != nil:
			*ref.str = s
		case ref.health != nil:
			*ref.health = Health(s)
		default:
			*ref.status = Status(s)
		}
	}
	return true
}

func (d *hiveDecoder) gpus(h *Hive) bool {
	r := &d.r
	n := r.arrayLen()
	switch {
	case !r.ok || n > MaxGPUs:
		return false
	case n < 0:
		h.GPUs = nil
		return true
	}
	h.GPUs = make([]GPU, n)
	d.u64 = make([]uint64, 0, 2*n)
	d.f64 = make([]float64, 0, 3*n)
	for i := range h.GPUs {
		g := &h.GPUs[i]
		if r.i < len(r.b) && r.b[r.i]&0xf0 != 0x80 && r.b[r.i] != 0xde && r.b[r.i] != 0xdf {
			return false // nil or an array as a struct: the reflection decoder's business
		}
		m := r.mapLen()
		for j := 0; j < m && r.ok; j++ {
			switch d.key() {
			case "index":
				g.Index = int(r.int())
			case "uuid":
				d.str(&g.UUID)
			case "name":
				d.str(&g.Name)
			case "vram_used_bytes":
				g.VRAMUsedBytes = d.u64p()
			case "vram_total_bytes":
				g.VRAMTotalBytes = d.u64p()
			case "util_percent":
				g.UtilPercent = d.f64p()
			case "temperature_c":
				g.TemperatureC = d.f64p()
			case "power_w":
				g.PowerW = d.f64p()
			case "health":
				d.health(&g.Health)
			case "health_reason":
				d.str(&g.HealthReason)
			default:
				r.skip()
			}
		}
		if !r.ok {
			return false
		}
	}
	return r.ok
}

func (d *hiveDecoder) workers(h *Hive) bool {
	r := &d.r
	n := r.arrayLen()
	switch {
	case !r.ok || n > MaxHiveWorkers:
		return false
	case n < 0:
		h.Workers = nil
		return true
	}
	h.Workers = make([]HiveWorker, n)
	for i := range h.Workers {
		w := &h.Workers[i]
		if r.i < len(r.b) && r.b[r.i]&0xf0 != 0x80 && r.b[r.i] != 0xde && r.b[r.i] != 0xdf {
			return false
		}
		m := r.mapLen()
		for j := 0; j < m && r.ok; j++ {
			switch d.key() {
			case "worker_id":
				d.str(&w.WorkerID)
			case "status":
				d.status(&w.Status)
			case "health":
				d.health(&w.Health)
			case "model_id":
				d.str(&w.ModelID)
			case "device":
				d.str(&w.Device)
			case "last_seen_ms":
				w.LastSeenMs = r.int()
			default:
				r.skip()
			}
		}
		if !r.ok {
			return false
		}
	}
	return r.ok
}
