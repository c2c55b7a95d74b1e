package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/internal/harness"
	"github.com/rbee/heartbeat/wire"
	"github.com/rs/zerolog"
)

// runOutage puts toxiproxy between the healthy workers and the broker and
// blackholes both directions for the outage length.
func runOutage(w *world, r *result) error {
	q, o, err := w.single("queen")
	if err != nil {
		return err
	}
	defer o.close()
	defer q.Stop(10 * time.Second)
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	px := toxiproxy.NewProxy(srv, "nats", "127.0.0.1:0", q.natsAddr)
	if err := px.Start(); err != nil {
		return err
	}
	defer px.Stop()
	f, err := w.fleet("healthy", "nats://"+px.Listen, hiveHealthy, w.opt.healthy)
	if err != nil {
		return err
	}
	defer f.Kill()
	if err := waitPresent(o, hiveHealthy, w.opt.healthy, 30*time.Second); err != nil {
		return err
	}
	pause(2 * interval)
	r.offer("%d healthy workers beating every %s through a toxiproxy (Go library) proxy to the queen's broker; the queen connects directly", w.opt.healthy, interval)
	r.offer("a `timeout` toxic with timeout 0 (blackhole) on both directions for %s (-outage, judged), then removed", w.opt.outage)
	lengths := []time.Duration{w.opt.outage}
	if beyond := ttl - interval; !w.opt.quick && beyond > w.opt.outage {
		lengths = append(lengths, beyond)
		r.offer("then, for comparison only, one of %s (TTL − 1 interval: \"shorter than the TTL\")", beyond)
	}
	for i, out := range lengths {
		o.resetGaps()
		tO := time.Now()
		for _, dir := range []string{"upstream", "downstream"} {
			js := fmt.Sprintf(`{"name":"blackhole_%s","type":"timeout","stream":"%s","attributes":{"timeout":0}}`, dir, dir)
			if _, err := px.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
				return fmt.Errorf("add toxic: %w", err)
			}
		}
		pause(out)
		for _, dir := range []string{"upstream", "downstream"} {
			if err := px.Toxics.RemoveToxic(context.Background(), "blackhole_"+dir); err != nil {
				return fmt.Errorf("remove toxic: %w", err)
			}
		}
		tE := time.Now()
		rec, ferr := waitFresh(o, hiveHealthy, w.opt.healthy, tE, 20*time.Second)
		pause(ttl + interval)
		fe := purges(o.removalsBetween(prefixOf(hiveHealthy), tO, time.Now()))
		r.fig(fmt.Sprintf("%s outage: false expiries", out), "%d of %d", len(fe), w.opt.healthy)
		if ferr != nil {
			r.fig(fmt.Sprintf("%s outage: every worker written again", out), "not within 20 s: %v", ferr)
		} else {
			r.fig(fmt.Sprintf("%s outage: every worker written again", out), "%s after it ended", rec.Round(time.Millisecond))
		}
		r.fig(fmt.Sprintf("%s outage: longest gap between two writes of a worker", out), "%s", maxGapOf(o, hiveHealthy).Round(time.Millisecond))
		if i == 0 {
			r.expect(fmt.Sprintf("0 false expiries (outage %s)", out), len(fe) == 0, "%d", len(fe))
		}
		if i+1 < len(lengths) {
			// The next outage starts from a whole registry.
			if _, err := waitFresh(o, hiveHealthy, w.opt.healthy, time.Now(), 20*time.Second); err != nil {
				return err
			}
		}
	}
	return nil
}

// runFullDisk runs the queen on a small tmpfs and fills it.
func runFullDisk(w *world, r *result) error {
	mnt := w.dir("disk")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt).CombinedOutput(); err != nil {
		r.skipped = fmt.Sprintf("`mount -t tmpfs` failed (needs root): %v %s", err, strings.TrimSpace(string(out)))
		return nil
	}
	defer func() { _ = exec.Command("umount", "-l", mnt).Run() }()
	ports, err := harness.FreePorts(2)
	if err != nil {
		return err
	}
	q, err := w.startQueen("queen", ports[0], "", ports[1], filepath.Join(mnt, "data"))
	if err != nil {
		return err
	}
	defer q.Stop(10 * time.Second)
	o, err := newObserver(q.url(), notLoad)
	if err != nil {
		return err
	}
	defer o.close()
	n := w.opt.healthy / 2
	f, err := w.fleet("healthy", q.url(), hiveHealthy, n)
	if err != nil {
		return err
	}
	defer f.Kill()
	if err := waitPresent(o, hiveHealthy, n, 30*time.Second); err != nil {
		return err
	}
	pause(2 * interval)
	hold := 8 * time.Second
	if w.opt.quick {
		hold = 4 * time.Second
	}
	r.offer("the queen's --data on a 64 MiB tmpfs; %d healthy workers beating every %s", n, interval)
	r.offer("the tmpfs filled with a file until ENOSPC, held full for %s, then the file removed", hold)
	m0, _ := harness.Scrape(q.httpAddr)
	pid := q.Pid()
	filler := filepath.Join(mnt, "filler")
	tF := time.Now()
	if err := fill(filler); err != nil {
		return err
	}
	// Watch the queen's state through its beat, /healthz and its KV writes.
	var beatAt, healthAt time.Time
	var beatState, healthBody string
	var metricAt time.Time
	var metricState string
	stateOf := func(since time.Time) (string, bool) {
		for id, b := range o.queenStates() {
			if b.at.After(since) && b.state != "" && b.state != "ok" {
				return id + ": " + b.state + " " + b.reason, true
			}
		}
		return "", false
	}
	for end := tF.Add(hold); time.Now().Before(end); pause(100 * time.Millisecond) {
		if beatAt.IsZero() {
			if s, ok := stateOf(tF); ok {
				beatAt, beatState = time.Now(), s
			}
		}
		if healthAt.IsZero() {
			if code, body, err := harness.Healthz(q.httpAddr); err == nil && code != 200 {
				healthAt, healthBody = time.Now(), fmt.Sprintf("%d %s", code, body)
			}
		}
		if metricAt.IsZero() {
			if m, err := harness.Scrape(q.httpAddr); err == nil {
				if st := stateGauge(m); st != "" && st != "ok" {
					metricAt, metricState = time.Now(), st
				}
			}
		}
	}
	mFull, _ := harness.Scrape(q.httpAddr)
	_, freshWhileFull := o.livePresent(prefixOf(hiveHealthy), tF.Add(2*interval))
	if err := os.Remove(filler); err != nil {
		return err
	}
	tFree := time.Now()
	var st syscall.Statfs_t
	if syscall.Statfs(mnt, &st) == nil {
		r.fig("free space once the filler was removed", "%s of the tmpfs", mib(int64(st.Bavail)*st.Bsize))
	}
	// Recovery: /healthz 200, no queen beat saying otherwise since, and every
	// healthy worker written again.
	var recovered time.Duration
	recBound := 30 * time.Second
	if w.opt.quick {
		recBound = 10 * time.Second
	}
	recErr := harness.WaitFor(recBound, "recovery", func() error {
		if q.Exited() {
			return errors.New("queen exited")
		}
		if code, body, err := harness.Healthz(q.httpAddr); err != nil || code != 200 {
			return fmt.Errorf("/healthz %d %s %v", code, body, err)
		}
		if s, bad := stateOf(time.Now().Add(-interval)); bad {
			return fmt.Errorf("queen beat: %s", s)
		}
		if _, fr := o.livePresent(prefixOf(hiveHealthy), tFree); fr < n {
			return fmt.Errorf("%d of %d workers written since the space returned", fr, n)
		}
		return nil
	})
	if recErr == nil {
		recovered = time.Since(tFree)
	}
	fe := purges(o.removalsBetween(prefixOf(hiveHealthy), tF, time.Now()))
	// Failed and lost writes, by the names of the queen before and after its
	// rewrite (kv_write_errors_total and kv_writes_lost_total, or
	// kv_write_failures_total by outcome).
	failures := func(m harness.Metrics) float64 {
		return m.Sum(counter("write_errors")) + m.Sum(counter("write_failures"))
	}
	losses := func(m harness.Metrics) float64 {
		return m.Sum(counter("writes_lost")) + m.Sum(counter("write_failures"), `outcome="lost"`)
	}
	we := failures(mFull) - failures(m0)
	lost := losses(mFull) - losses(m0)
	within := func(t time.Time) string {
		if t.IsZero() {
			return "never, in " + hold.String()
		}
		return t.Sub(tF).Round(time.Millisecond).String() + " after the disk filled"
	}
	r.fig("queen beat not `ok`", "%s %s", within(beatAt), beatState)
	r.fig("/healthz not 200", "%s %s", within(healthAt), healthBody)
	r.fig("rbee_queen_state not ok in /metrics", "%s %s", within(metricAt), metricState)
	r.fig("write errors / writes counted lost while full", "%.0f / %.0f", we, lost)
	r.fig("healthy workers written while full (after the first 2 s)", "%d of %d", freshWhileFull, n)
	r.fig("expiries of beating workers during the fault and recovery", "%d", len(fe))
	if recErr != nil {
		r.fig("recovery after the space returned", "none: %v", recErr)
	} else {
		r.fig("recovery after the space returned", "%s (/healthz 200, every worker written again)", recovered.Round(time.Millisecond))
	}
	r.fig("queen process", "pid %d before, %d after (%s)", pid, q.Pid(), map[bool]string{true: "exited", false: "not restarted"}[q.Exited()])
	var first time.Time
	for _, t := range []time.Time{beatAt, healthAt, metricAt} {
		if !t.IsZero() && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	r.expect("`degraded` within one interval", !first.IsZero() && first.Sub(tF) <= interval, "%s", within(first))
	r.expect("recovery without restart", recErr == nil && !q.Exited() && q.Pid() == pid, "%s", map[bool]string{true: "recovered in " + recovered.Round(time.Millisecond).String(), false: "not recovered within " + recBound.String()}[recErr == nil])
	if r.failed() {
		n, _ := q.Count("level=warn")
		e, _ := q.Count("level=error")
		r.note("the queen's log had %d warnings and %d errors; its last lines: `%s`", n, e, cell(lastLines(q.Output(), 6)))
	}
	return nil
}

// fill writes path until the file system is full.
func fill(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if strings.Contains(err.Error(), "no space") {
				return nil
			}
			return err
		}
	}
}

// forged describes one forged message and its victim.
type forged struct {
	key, what   string
	newInstance bool
	goodbye     bool
	seq         uint64
	// filled in:
	realInstance string
	realSeq      uint64
	lockout      time.Duration
	ended        bool
	conflict     bool
}

// runForgery publishes forged beats for three real workers and measures how
// long each real worker stays locked out of the registry.
func runForgery(w *world, r *result) error {
	q, o, err := w.single("queen")
	if err != nil {
		return err
	}
	defer o.close()
	defer q.Stop(10 * time.Second)
	f, err := w.fleet("victims", q.url(), hiveVictim, 3)
	if err != nil {
		return err
	}
	defer f.Kill()
	if err := waitPresent(o, hiveVictim, 3, 30*time.Second); err != nil {
		return err
	}
	pause(2 * interval)
	fs := []*forged{
		{key: hiveVictim + ".w-0", what: "a goodbye with a new instance ID", newInstance: true, goodbye: true, seq: 1},
		{key: hiveVictim + ".w-1", what: "a beat with the worker's own instance and seq 2^53", seq: 1 << 53},
		{key: hiveVictim + ".w-2", what: "a beat with a new instance ID", newInstance: true, seq: 1},
	}
	snap := o.snapshot(prefixOf(hiveVictim))
	m0, _ := harness.Scrape(q.httpAddr)
	r.offer("three real workers (`rbee worker --simulate 3 --interval %s`); one forged message each, published straight on NATS", interval)
	for _, x := range fs {
		s := snap[x.key]
		x.realInstance, x.realSeq = s.instance, s.seq
		if x.realInstance == "" {
			return fmt.Errorf("no value seen for %s", x.key)
		}
		r.offer("%s: %s", x.key, x.what)
	}
	o.mu.Lock()
	for _, x := range fs {
		if s := o.keys[x.key]; s != nil {
			s.conflict = false
		}
	}
	o.mu.Unlock()
	tF := time.Now()
	for _, x := range fs {
		inst := x.realInstance
		if x.newInstance {
			var b [16]byte
			_, _ = rand.Read(b[:])
			inst = hex.EncodeToString(b[:])
		}
		hive, wid, _ := strings.Cut(x.key, ".")
		beat := wire.Worker{
			Meta: wire.Meta{V: wire.SchemaVersion, InstanceID: inst, Seq: x.seq, SentAtMs: time.Now().UnixMilli(),
				IntervalMs: interval.Milliseconds(), Health: wire.Healthy},
			HiveID: hive, WorkerID: wid, Status: wire.StatusReady, Device: "cpu", SlotsTotal: 1, Version: "forged",
		}
		data, err := wire.Marshal(&beat)
		if err != nil {
			return err
		}
		h := nats.Header{wire.HeaderContentType: {wire.ContentTypeMsgpack}, wire.HeaderSchema: {wire.SchemaWorker}}
		if x.goodbye {
			h.Set(wire.HeaderEvent, wire.EventGoodbye)
		}
		if err := o.nc.PublishMsg(&nats.Msg{Subject: "rbee.hb.worker." + hive + "." + wid, Header: h, Data: data}); err != nil {
			return err
		}
	}
	if err := o.nc.Flush(); err != nil {
		return err
	}
	bound := 4*ttl + 2*interval
	if w.opt.quick {
		bound = 2*ttl + interval
	}
	for end := tF.Add(bound); time.Now().Before(end); pause(50 * time.Millisecond) {
		snap := o.snapshot(prefixOf(hiveVictim))
		done := true
		for _, x := range fs {
			s := snap[x.key]
			x.conflict = x.conflict || s.conflict
			if x.ended {
				continue
			}
			if s.op.String() == "KeyValuePutOp" && s.lastPut.After(tF) && s.instance == x.realInstance &&
				s.seq > x.realSeq && s.seq < 1<<53 {
				x.ended, x.lockout = true, s.lastPut.Sub(tF)
				continue
			}
			done = false
		}
		if done {
			break
		}
	}
	pause(interval) // a conflict flag may follow the real worker's return
	snap = o.snapshot(prefixOf(hiveVictim))
	m1, _ := harness.Scrape(q.httpAddr)
	conflicts := m1.Sum(counter("conflict")) - m0.Sum(counter("conflict"))
	for _, x := range fs {
		x.conflict = x.conflict || snap[x.key].conflict
		got := "> " + bound.String() + " (not back within the bound)"
		if x.ended {
			got = x.lockout.Round(time.Millisecond).String()
		}
		held := "absent"
		if s := snap[x.key]; s.op.String() == "KeyValuePutOp" {
			held = "the real worker's beat"
			if s.instance != x.realInstance || s.seq >= 1<<53 {
				held = "the forged beat"
			}
		}
		r.fig(x.key+" lockout", "%s; conflict on the entry: %v; KV holds at the end: %s", got, x.conflict, held)
		r.expect("lockout ≤ 1 TTL: "+x.what, x.ended && x.lockout <= ttl, "%s", got)
		if x.newInstance {
			r.expect("conflict reported: "+x.what, x.conflict || conflicts > 0, "entry flag %v, conflict counters +%.0f", x.conflict, conflicts)
		}
	}
	r.fig("conflict counters in /metrics", "+%.0f", conflicts)
	r.note("lockout: from the forged message until the real worker's own beat (its instance, a seq above the one before) is in KV again")
	return nil
}

// stateGauge returns the state whose rbee_queen_state gauge is 1, or "" if
// the queen exports none.
func stateGauge(m harness.Metrics) string {
	for full, v := range m.Samples {
		if v == 1 && strings.HasPrefix(full, "rbee_queen_state{") {
			if _, rest, ok := strings.Cut(full, `state="`); ok {
				st, _, _ := strings.Cut(rest, `"`)
				return st
			}
		}
	}
	return ""
}
