package main

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/wire"
)

// The load generator runs in its own process (this program re-executed
// with -role load), so that the healthy workers whose expiries are counted
// do not share a process with it. It sends pre-encoded worker beats, each
// key once per interval at the offered rate, patching seq and sent_at_ms in
// place, and prints what it sent as JSON lines.

// loadReport is one line the load generator prints.
type loadReport struct {
	Step     int    `json:"step,omitempty"` // offered rate of a ramp step
	Sent     uint64 `json:"sent"`           // beats handed to the connection
	Goodbyes uint64 `json:"goodbyes"`       // goodbyes among them
	Errors   uint64 `json:"errors"`         // publishes that failed
	FromMs   int64  `json:"from_ms"`
	ToMs     int64  `json:"to_ms"`
	ByeAtMs  int64  `json:"goodbye_at_ms,omitempty"`
	Final    bool   `json:"final,omitempty"`
}

// loadFleet is n pre-encoded worker beats.
type loadFleet struct {
	subj    []string
	data    [][]byte
	seqOff  []int
	sentOff []int
	seq     []uint64
	busyOff []int // offset of slots_busy's value (a positive fixint)
	// changing flips slots_busy between 0 and 1 at every beat, so that every
	// beat changes what a reader sees and must be written (a lone queen
	// writes an unchanged beat only when its entry is due to expire).
	changing bool
	hdr      nats.Header
	bye      nats.Header
}

func newLoadFleet(hive string, n int, interval time.Duration, changing bool) (*loadFleet, error) {
	var id [16]byte
	_, _ = rand.Read(id[:])
	inst := hex.EncodeToString(id[:])
	f := &loadFleet{
		changing: changing,
		hdr:      nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker}},
		bye: nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker},
			wire.HeaderEvent: {wire.EventGoodbye}},
	}
	for i := range n {
		w := wire.Worker{
			Meta: wire.Meta{V: wire.SchemaVersion, InstanceID: inst[:24] + fmt.Sprintf("%08x", i), Seq: 1 << 31,
				SentAtMs: time.Now().UnixMilli(), IntervalMs: interval.Milliseconds(), Health: wire.Healthy},
			HiveID: hive, WorkerID: "w" + strconv.Itoa(i), Status: wire.StatusReady,
			ModelID: "meta-llama/Llama-3.1-8B-Instruct", Device: "cuda:" + strconv.Itoa(i%8),
			URL: "http://10.0.0.1:9000", Version: "chaos", SlotsTotal: 8,
		}
		b, err := wire.Marshal(&w)
		if err != nil {
			return nil, err
		}
		so := bytes.Index(b, []byte("\xa3seq\xce"))
		to := bytes.Index(b, []byte("\xaasent_at_ms"))
		bo := bytes.Index(b, []byte("\xaaslots_busy\x00"))
		if so < 0 || to < 0 || bo < 0 || (b[to+11] != 0xcf && b[to+11] != 0xd3) {
			return nil, errors.New("load: cannot find seq and sent_at_ms in the encoded beat")
		}
		f.subj = append(f.subj, "rbee.hb.worker."+hive+".w"+strconv.Itoa(i))
		f.data = append(f.data, b)
		f.seqOff = append(f.seqOff, so+5)
		f.sentOff = append(f.sentOff, to+12)
		f.busyOff = append(f.busyOff, bo+11)
		f.seq = append(f.seq, 1<<31)
	}
	// Check the patching once.
	f.patch(0, time.Now().UnixMilli())
	got, err := wire.DecodeWorker(f.data[0])
	if err != nil || got.Seq != f.seq[0] {
		return nil, fmt.Errorf("load: patched beat does not decode: %v", err)
	}
	return f, nil
}

// patch gives beat i the next seq and sentAt; each key's payload is reused
// only after the connection has copied it (nats.go copies on publish).
func (f *loadFleet) patch(i int, sentAt int64) {
	f.seq[i]++
	binary.BigEndian.PutUint32(f.data[i][f.seqOff[i]:], uint32(f.seq[i]))
	binary.BigEndian.PutUint64(f.data[i][f.sentOff[i]:], uint64(sentAt))
	if f.changing {
		f.data[i][f.busyOff[i]] = byte(f.seq[i] & 1)
	}
}

func (f *loadFleet) send(nc *nats.Conn, i int, bye bool) error {
	f.patch(i, time.Now().UnixMilli())
	h := f.hdr
	if bye {
		h = f.bye
	}
	return nc.PublishMsg(&nats.Msg{Subject: f.subj[i], Header: h, Data: f.data[i]})
}

// loadMain is the load generator's entry point.
func loadMain(args []string) error {
	fs := flag.NewFlagSet("chaos load", flag.ContinueOnError)
	url := fs.String("url", "", "NATS URL")
	hive := fs.String("hive", "load", "hive ID of the load workers")
	keys := fs.Int("keys", 1000, "load workers (each beats once per interval)")
	interval := fs.Duration("interval", time.Second, "beat interval")
	dur := fs.Duration("duration", 10*time.Second, "how long to beat")
	byeAt := fs.Duration("goodbye-at", 0, "when the first -goodbyes workers send a goodbye and stop (0: never)")
	byes := fs.Int("goodbyes", 0, "workers that say goodbye at -goodbye-at")
	ramp := fs.String("ramp", "", "comma-separated rates; each step beats that many workers per interval for -step")
	step := fs.Duration("step", 2*time.Second, "length of a ramp step")
	changing := fs.Bool("changing", false, "flip slots_busy at every beat, so every beat must be written")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nc, err := nats.Connect(*url, nats.Name("chaos-load"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.ReconnectBufSize(64<<20))
	if err != nil {
		return err
	}
	defer nc.Close()
	out := json.NewEncoder(os.Stdout)
	if *ramp != "" {
		var rates []int
		for _, s := range strings.Split(*ramp, ",") {
			r, err := strconv.Atoi(s)
			if err != nil {
				return err
			}
			rates = append(rates, r)
		}
		f, err := newLoadFleet(*hive, rates[len(rates)-1], *interval, *changing)
		if err != nil {
			return err
		}
		for _, r := range rates {
			rep := drive(nc, f, r, r, *interval, *step, 0, 0)
			rep.Step = r
			_ = out.Encode(rep)
		}
		_ = nc.Flush()
		return nil
	}
	f, err := newLoadFleet(*hive, *keys, *interval, *changing)
	if err != nil {
		return err
	}
	rep := drive(nc, f, *keys, *keys, *interval, *dur, *byeAt, *byes)
	if err := nc.FlushTimeout(30 * time.Second); err != nil {
		rep.Errors++
	}
	rep.Final = true
	return out.Encode(rep)
}

// drive beats keys workers, rate per interval in all, for dur; at byeAt the
// first byes of them send a goodbye and stop.
func drive(nc *nats.Conn, f *loadFleet, keys, perInterval int, interval, dur, byeAt time.Duration, byes int) loadReport {
	rate := float64(perInterval) / interval.Seconds()
	start := time.Now()
	rep := loadReport{FromMs: start.UnixMilli()}
	first := 0 // workers below first have said goodbye
	var k uint64
	for {
		el := time.Since(start)
		if el >= dur {
			break
		}
		if byeAt > 0 && first == 0 && el >= byeAt && byes > 0 {
			for i := range min(byes, keys) {
				if err := f.send(nc, i, true); err != nil {
					rep.Errors++
					continue
				}
				rep.Sent++
				rep.Goodbyes++
			}
			first = min(byes, keys)
			rep.ByeAtMs = time.Now().UnixMilli()
		}
		want := uint64(el.Seconds() * rate)
		for ; k < want; k++ {
			i := int(k % uint64(keys))
			if i < first {
				continue
			}
			if err := f.send(nc, i, false); err != nil {
				rep.Errors++
				continue
			}
			rep.Sent++
		}
		time.Sleep(time.Millisecond)
	}
	rep.ToMs = time.Now().UnixMilli()
	return rep
}
