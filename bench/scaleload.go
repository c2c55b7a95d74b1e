package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// The scale phase's load generator runs in its own process (this program
// re-executed with -role scale-load), so that what it costs is not counted
// as the queen's or the broker's. It beats a fleet the size of a real one at
// the real intervals: every worker once per interval and every hive once per
// hive interval, spread evenly, each worker's first beat held back so that
// no more than -join-rate workers join per second.

// scaleShape is the fleet and its timetable, known to the generator and to
// the bench that reads what it did. Worker i belongs to hive i mod Hives.
//
// Workers join in Layers intervals: worker i sends its first beat in
// interval i mod Layers, at slot i / Layers of Slots, and then every
// Interval at the same phase. In the steady state every slot thus holds one
// beat of each layer, and the fleet's beats are spread evenly. Hive h beats
// at phase h/Hives of its own interval from the start.
type scaleShape struct {
	Workers, PerHive, Hives int
	Interval, HiveInterval  time.Duration
	Layers, Slots           int
}

// newScaleShape returns the timetable of n workers, perHive to a hive,
// joining at most joinRate per second.
func newScaleShape(n, perHive int, interval, hiveInterval time.Duration, joinRate float64) (scaleShape, error) {
	if n < 1 || perHive < 1 || perHive > 999 || interval < time.Millisecond || hiveInterval < time.Millisecond || joinRate <= 0 {
		return scaleShape{}, fmt.Errorf("bad fleet: %d workers, %d per hive, intervals %s and %s, join rate %g", n, perHive, interval, hiveInterval, joinRate)
	}
	s := scaleShape{Workers: n, PerHive: perHive, Hives: (n + perHive - 1) / perHive, Interval: interval, HiveInterval: hiveInterval}
	if s.Hives > 999999 {
		return s, fmt.Errorf("%d hives: at most 999999", s.Hives)
	}
	perInterval := joinRate * interval.Seconds()
	s.Layers = max(1, int((float64(n)+perInterval-1)/perInterval))
	s.Slots = (n + s.Layers - 1) / s.Layers
	return s, nil
}

// joinTime returns how long after the start all workers have sent their first beat.
func (s scaleShape) joinTime() time.Duration { return time.Duration(s.Layers) * s.Interval }

// slotAt returns the offset of slot j within an interval.
func (s scaleShape) slotAt(j int) time.Duration {
	return time.Duration(int64(j) * int64(s.Interval) / int64(s.Slots))
}

// first returns when worker i sends its first beat, after the start.
func (s scaleShape) first(i int) time.Duration {
	return time.Duration(i%s.Layers)*s.Interval + s.slotAt(i/s.Layers)
}

// beatsBy returns how many beats worker i has sent by el after the start
// (by the timetable); beat k is sent at first(i) + k × Interval.
func (s scaleShape) beatsBy(i int, el time.Duration) int {
	f := s.first(i)
	if el < f {
		return 0
	}
	return int((el-f)/s.Interval) + 1
}

// hiveAt returns when hive h sends beat k, after the start.
func (s scaleShape) hiveAt(h, k int) time.Duration {
	return time.Duration(k)*s.HiveInterval + time.Duration(int64(h)*int64(s.HiveInterval)/int64(s.Hives))
}

// hiveID and workerID name worker i; the IDs have a fixed width, so that the
// generator can write them into one encoded beat.
func (s scaleShape) hiveID(h int) string   { return fmt.Sprintf("gpu-node-%06d", h) }
func (s scaleShape) workerID(i int) string { return fmt.Sprintf("llm-%03d", i/s.Hives) }
func (s scaleShape) key(i int) string {
	return subjects.WorkerKey(s.hiveID(i%s.Hives), s.workerID(i))
}

// samples returns the workers whose status changes every second beat (their
// lag is measured) and the workers killed once all have joined, disjoint:
// whole hives, spread over the fleet, so that a reader follows them with one
// filter per hive. The broker matches every expiry against each filter of
// each consumer; with one filter per sampled key the reader was the broker's
// largest cost once entries expired.
func (s scaleShape) samples(changes, kills int) (change, kill []int, err error) {
	if changes < 0 || kills < 0 || changes+kills > s.Workers {
		return nil, nil, fmt.Errorf("%d changed and %d killed workers out of %d", changes, kills, s.Workers)
	}
	need := (changes+s.PerHive-1)/s.PerHive + (kills+s.PerHive-1)/s.PerHive
	used := map[int]bool{}
	next := 0 // hives handed out
	fill := func(want int) ([]int, error) {
		var out []int
		for len(out) < want {
			h := (2*next + 1) * s.Hives / (2 * max(need, 1)) // spread over the fleet
			if next++; next > need || used[h] {
				for h = 0; h < s.Hives && used[h]; h++ {
				}
			}
			if h >= s.Hives {
				return nil, fmt.Errorf("%d changed and %d killed workers: not enough hives among %d", changes, kills, s.Hives)
			}
			used[h] = true
			for i := h; i < s.Workers && len(out) < want; i += s.Hives { // worker i is in hive i mod Hives
				out = append(out, i)
			}
		}
		return out, nil
	}
	if change, err = fill(changes); err == nil {
		kill, err = fill(kills)
	}
	return change, kill, err
}

// statusOf returns the status a changing worker beats in its beat k (k from
// 0): ready, ready, busy, busy, ready, …; every beat k ≥ 2 with k even is a change.
func statusOf(k int) wire.Status {
	if k/2%2 == 1 {
		return wire.StatusBusy
	}
	return wire.StatusReady
}

// seqBase is the first seq of every generator beat: above 2^32, so that the
// seq is always an 8-byte integer that can be written in place.
const scaleSeqBase = 1 << 32

// workerTemplate is one encoded worker beat with the offsets of the values
// the generator writes in place for each beat.
type workerTemplate struct {
	data                          []byte
	inst, hive, worker, seq, sent int
	instW, hiveW, workerW         int
}

// newWorkerTemplate encodes a worker beat with the given status and finds
// where its per-beat values sit.
func newWorkerTemplate(s scaleShape, st wire.Status, busy int) (*workerTemplate, error) {
	w := wire.Worker{
		Meta: wire.Meta{V: wire.SchemaVersion, InstanceID: "00000000000000000000000000000000", Seq: scaleSeqBase,
			SentAtMs: sentAtBase, IntervalMs: s.Interval.Milliseconds(), Health: wire.Healthy},
		HiveID: s.hiveID(0), WorkerID: s.workerID(0), Status: st, ModelID: models[0], Device: "cuda:0",
		URL: "http://10.0.0.1:9000", Version: "0.4.2", SlotsTotal: 8, SlotsBusy: busy,
	}
	b, err := wire.Marshal(&w)
	if err != nil {
		return nil, err
	}
	t := &workerTemplate{data: b}
	var errs []error
	at := func(key string, width *int) int {
		off, w, err := valueAt(b, key)
		errs = append(errs, err)
		if width != nil {
			*width = w
		} else if w != 8 {
			errs = append(errs, fmt.Errorf("%s is %d bytes wide, not 8", key, w))
		}
		return off
	}
	t.inst, t.hive, t.worker = at("instance_id", &t.instW), at("hive_id", &t.hiveW), at("worker_id", &t.workerW)
	t.seq, t.sent = at("seq", nil), at("sent_at_ms", nil)
	return t, errors.Join(errs...)
}

// fill writes worker i's identity, its beat k and the send time into the
// template and returns it (valid until the next fill).
func (t *workerTemplate) fill(s scaleShape, inst string, i, k int, sentAtMs int64) []byte {
	copy(t.data[t.inst:t.inst+t.instW], inst)
	putHex(t.data[t.inst+t.instW-16:t.inst+t.instW], uint64(i))
	putDigits(t.data[t.hive+t.hiveW-6:t.hive+t.hiveW], uint64(i%s.Hives))
	putDigits(t.data[t.worker+t.workerW-3:t.worker+t.workerW], uint64(i/s.Hives))
	binary.BigEndian.PutUint64(t.data[t.seq:], scaleSeqBase+uint64(k))
	binary.BigEndian.PutUint64(t.data[t.sent:], uint64(sentAtMs))
	return t.data
}

func putHex(dst []byte, v uint64) {
	const digits = "0123456789abcdef"
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = digits[v&15]
		v >>= 4
	}
}

// valueAt returns the offset and width of the value of the msgpack map key
// k in b: a string's bytes, or an integer's 4 or 8 bytes.
func valueAt(b []byte, k string) (int, int, error) {
	enc := append([]byte{0xa0 | byte(len(k))}, k...)
	i := bytes.Index(b, enc)
	if i < 0 || bytes.Contains(b[i+1:], enc) || i+len(enc)+1 >= len(b) {
		return 0, 0, fmt.Errorf("key %s not found once in the encoded beat", k)
	}
	i += len(enc)
	switch h := b[i]; {
	case h&0xe0 == 0xa0:
		return i + 1, int(h & 0x1f), nil
	case h == 0xd9:
		return i + 2, int(b[i+1]), nil
	case h == 0xce || h == 0xd2:
		return i + 1, 4, nil
	case h == 0xcf || h == 0xd3:
		return i + 1, 8, nil
	}
	return 0, 0, fmt.Errorf("key %s: value of type %#x cannot be written in place", k, b[i])
}

// loadEvent is one line the scale generator prints.
type loadEvent struct {
	Event string `json:"event"` // ready, joined, killed, start, window, final
	AtMs  int64  `json:"at_ms"`
	// ready
	StartMs     int64   `json:"start_ms,omitempty"`
	WorkerBytes int     `json:"worker_bytes,omitempty"`
	HiveBytes   int     `json:"hive_bytes,omitempty"`
	JoinRate    float64 `json:"join_rate,omitempty"`
	// killed: each killed worker's last beat, Unix ms
	LastBeatMs map[string]int64 `json:"last_beat_ms,omitempty"`
	// window and final: what was sent since joined (window) or in all (final)
	WorkerBeats uint64 `json:"worker_beats,omitempty"`
	HiveBeats   uint64 `json:"hive_beats,omitempty"`
	Changes     uint64 `json:"changes,omitempty"` // change beats of the sample
	Errors      uint64 `json:"errors,omitempty"`
	// BehindMs is the most any beat was sent after its time in the timetable.
	BehindMs float64 `json:"behind_ms,omitempty"`
}

// scaleLoad is the generator's state.
type scaleLoad struct {
	s                 scaleShape
	nc                *nats.Conn
	inst              string // 16 random hex digits; worker i's instance is inst + i in hex
	ready, busy       *workerTemplate
	hdr, hiveHdr      nats.Header
	role              map[int]byte // 'c': changes, 'k': killed
	killed            bool
	killedAt          time.Duration
	last              map[int]time.Time // last beat sent by each sample worker
	hive              wire.Hive
	start             time.Time
	workers, hives    uint64
	changes, errs     uint64
	behind            time.Duration
	winFrom, winUntil time.Duration
}

// scaleLoadMain is the generator's entry point: it beats until SIGTERM,
// SIGINT or -duration, then prints its final line.
func scaleLoadMain(args []string) error {
	fs := flag.NewFlagSet("bench scale-load", flag.ContinueOnError)
	url := fs.String("url", "", "NATS URL")
	n := fs.Int("workers", 10000, "workers")
	perHive := fs.Int("per-hive", 100, "workers per hive")
	interval := fs.Duration("interval", 30*time.Second, "worker interval")
	hiveInterval := fs.Duration("hive-interval", 15*time.Second, "hive interval")
	joinRate := fs.Float64("join-rate", 10000, "most workers joining per second")
	settle := fs.Duration("settle", 30*time.Second, "how long after all have joined the measured window starts")
	hold := fs.Duration("hold", 90*time.Second, "the measured window")
	changes := fs.Int("changes", 200, "workers whose status changes every second beat")
	kills := fs.Int("kills", 100, "workers that stop beating, without a goodbye, once all have joined")
	dur := fs.Duration("duration", 10*time.Minute, "stop after this long whatever happens")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := newScaleShape(*n, *perHive, *interval, *hiveInterval, *joinRate)
	if err != nil {
		return err
	}
	change, kill, err := s.samples(*changes, *kills)
	if err != nil {
		return err
	}
	g := &scaleLoad{s: s, role: map[int]byte{}, last: map[int]time.Time{},
		hdr:     nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker}},
		hiveHdr: nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaHive}},
	}
	for _, i := range change {
		g.role[i] = 'c'
	}
	for _, i := range kill {
		g.role[i] = 'k'
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	g.inst = hex.EncodeToString(id[:])
	if g.ready, err = newWorkerTemplate(s, wire.StatusReady, 0); err != nil {
		return err
	}
	if g.busy, err = newWorkerTemplate(s, wire.StatusBusy, 4); err != nil {
		return err
	}
	if err := g.check(); err != nil {
		return err
	}
	g.hive = sampleHive()
	g.hive.IntervalMs = s.HiveInterval.Milliseconds()
	g.hive.Workers = make([]wire.HiveWorker, 0, s.PerHive)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()
	g.nc, err = nats.Connect(*url, nats.Name("bench-scale-load"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.ReconnectBufSize(256<<20))
	if err != nil {
		return err
	}
	defer g.nc.Close()
	out := json.NewEncoder(os.Stdout)
	g.start = time.Now()
	hb, _ := wire.Marshal(g.hiveBeat(0, 0, g.start.Add(s.joinTime()))) // a whole view's size
	_ = out.Encode(loadEvent{Event: "ready", AtMs: g.start.UnixMilli(), StartMs: g.start.UnixMilli(),
		WorkerBytes: len(g.ready.data), HiveBytes: len(hb), JoinRate: float64(s.Workers) / s.joinTime().Seconds()})
	g.winFrom, g.winUntil = s.joinTime()+*settle, s.joinTime()+*settle+*hold
	g.run(ctx, out)
	_ = g.nc.FlushTimeout(10 * time.Second)
	return out.Encode(loadEvent{Event: "final", AtMs: time.Now().UnixMilli(), WorkerBeats: g.workers, HiveBeats: g.hives,
		Changes: g.changes, Errors: g.errs, BehindMs: float64(g.behind.Microseconds()) / 1000})
}

// check fills both templates for a worker and decodes them back.
func (g *scaleLoad) check() error {
	i := g.s.Workers - 1
	for _, c := range []struct {
		t  *workerTemplate
		st wire.Status
	}{{g.ready, wire.StatusReady}, {g.busy, wire.StatusBusy}} {
		w, err := wire.DecodeWorker(c.t.fill(g.s, g.inst, i, 7, 1767225600123))
		if err != nil {
			return fmt.Errorf("scale-load: a filled beat does not decode: %w", err)
		}
		if w.HiveID+"."+w.WorkerID != g.s.key(i) || w.Seq != scaleSeqBase+7 || w.SentAtMs != 1767225600123 ||
			w.Status != c.st || w.InstanceID != g.inst+fmt.Sprintf("%016x", i) {
			return fmt.Errorf("scale-load: a filled beat reads %s.%s seq %d sent %d status %s instance %s",
				w.HiveID, w.WorkerID, w.Seq, w.SentAtMs, w.Status, w.InstanceID)
		}
	}
	return nil
}

// run sends every beat as it falls due, in timetable order, until ctx ends.
func (g *scaleLoad) run(ctx context.Context, out *json.Encoder) {
	s := g.s
	var slot, hslot int // the next worker slot (interval × Slots + j) and hive slot
	joined, started, windowDone := false, false, false
	var w0, h0, c0, e0 uint64
	slotTime := func(n int) time.Duration { return time.Duration(n/s.Slots)*s.Interval + s.slotAt(n%s.Slots) }
	hiveTime := func(n int) time.Duration { return s.hiveAt(n%s.Hives, n/s.Hives) }
	for ctx.Err() == nil {
		el := time.Since(g.start)
		for {
			ws, hs := slotTime(slot), hiveTime(hslot)
			if min(ws, hs) > el {
				break
			}
			if hs < ws {
				g.sendHive(hslot%s.Hives, hslot/s.Hives, el-hs)
				hslot++
				continue
			}
			q, j := slot/s.Slots, slot%s.Slots
			for l := range min(q+1, s.Layers) {
				if i := j*s.Layers + l; i < s.Workers {
					g.sendWorker(i, q-l, el-ws)
				}
			}
			slot++
		}
		if !joined && el >= s.joinTime() {
			joined = true
			g.kill(out)
			_ = out.Encode(loadEvent{Event: "joined", AtMs: time.Now().UnixMilli()})
		}
		if !started && el >= g.winFrom {
			started = true
			w0, h0, c0, e0 = g.workers, g.hives, g.changes, g.errs
			_ = out.Encode(loadEvent{Event: "start", AtMs: time.Now().UnixMilli()})
		}
		if !windowDone && el >= g.winUntil {
			windowDone = true
			_ = out.Encode(loadEvent{Event: "window", AtMs: time.Now().UnixMilli(), WorkerBeats: g.workers - w0,
				HiveBeats: g.hives - h0, Changes: g.changes - c0, Errors: g.errs - e0, BehindMs: float64(g.behind.Microseconds()) / 1000})
		}
		t := time.NewTimer(time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// kill stops the killed sample's beats and prints when each sent its last.
func (g *scaleLoad) kill(out *json.Encoder) {
	g.killed, g.killedAt = true, time.Since(g.start)
	ev := loadEvent{Event: "killed", AtMs: time.Now().UnixMilli(), LastBeatMs: map[string]int64{}}
	for i, r := range g.role {
		if r == 'k' {
			ev.LastBeatMs[g.s.key(i)] = g.last[i].UnixMilli()
		}
	}
	_ = out.Encode(ev)
}

// sendWorker sends beat k of worker i, late by behind.
func (g *scaleLoad) sendWorker(i, k int, behind time.Duration) {
	r := g.role[i]
	if r == 'k' && g.killed {
		return
	}
	t := g.ready
	if r == 'c' && statusOf(k) == wire.StatusBusy {
		t = g.busy
	}
	now := time.Now()
	data := t.fill(g.s, g.inst, i, k, now.UnixMilli())
	h := g.s.hiveID(i % g.s.Hives)
	err := g.nc.PublishMsg(&nats.Msg{Subject: "rbee.hb.worker." + h + "." + g.s.workerID(i), Header: g.hdr, Data: data})
	g.count(err, &g.workers, behind)
	if r != 0 {
		g.last[i] = now
		el := now.Sub(g.start)
		if r == 'c' && k >= 2 && k%2 == 0 && el >= g.winFrom && el < g.winUntil {
			g.changes++
		}
	}
}

func (g *scaleLoad) count(err error, n *uint64, behind time.Duration) {
	if err != nil {
		g.errs++
		return
	}
	*n++
	g.behind = max(g.behind, behind)
}

// sendHive sends beat k of hive h, late by behind.
func (g *scaleLoad) sendHive(h, k int, behind time.Duration) {
	data, err := wire.Marshal(g.hiveBeat(h, k, time.Now()))
	if err == nil {
		err = g.nc.PublishMsg(&nats.Msg{Subject: "rbee.hb.hive." + g.s.hiveID(h), Header: g.hiveHdr, Data: data})
	}
	g.count(err, &g.hives, behind)
}

// hiveBeat returns beat k of hive h at now: its view of its workers as a
// hive builds it, each with the time of its last beat, a killed worker
// dropped after three of its intervals of silence.
func (g *scaleLoad) hiveBeat(h, k int, now time.Time) *wire.Hive {
	s, hv := g.s, &g.hive
	hv.HiveID, hv.Hostname = s.hiveID(h), s.hiveID(h)+".dc1.example.net"
	hv.InstanceID = g.inst + fmt.Sprintf("h%015x", h)
	hv.Seq, hv.SentAtMs = scaleSeqBase+uint64(k), now.UnixMilli()
	hv.Workers = hv.Workers[:0]
	el := now.Sub(g.start)
	for i := h; i < s.Workers && len(hv.Workers) < s.PerHive; i += s.Hives {
		n := s.beatsBy(i, el)
		if n == 0 {
			continue
		}
		seen := g.start.Add(s.first(i) + time.Duration(n-1)*s.Interval)
		r := g.role[i]
		if r == 'k' && g.killed {
			seen = g.last[i]
			if now.Sub(seen) > 3*s.Interval {
				continue
			}
		}
		st := wire.StatusReady
		if r == 'c' {
			st = statusOf(n - 1)
		}
		hv.Workers = append(hv.Workers, wire.HiveWorker{WorkerID: s.workerID(i), Status: st, Health: wire.Healthy,
			ModelID: models[0], Device: "cuda:" + strconv.Itoa(i/s.Hives%8), LastSeenMs: seen.UnixMilli()})
	}
	return hv
}
