package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/embedded"
	"github.com/rbee/heartbeat/internal/harness"
)

// Names of the hives whose workers the cases tell apart.
const (
	hiveHealthy = "healthy"
	hiveLoad    = "load"
	hiveLeave   = "leave" // workers that say goodbye while a queen is paused
	hiveVictim  = "victim"
)

func notLoad(k string) bool { return !strings.HasPrefix(k, hiveLoad+".") }

// single starts one queen with an embedded broker and an observer on it.
func (w *world) single(label string) (*queen, *observer, error) {
	ports, err := harness.FreePorts(2)
	if err != nil {
		return nil, nil, err
	}
	q, err := w.startQueen(label, ports[0], "", ports[1], w.dir(label))
	if err != nil {
		return nil, nil, err
	}
	o, err := newObserver(q.url(), notLoad)
	if err != nil {
		q.Kill()
		return nil, nil, err
	}
	return q, o, nil
}

// Metric selectors, by name so that they hold for the queen before and after
// its rewrite: counters ending in _total.
func counter(sub string) func(string) bool {
	return func(n string) bool { return strings.Contains(n, sub) && strings.HasSuffix(n, "_total") }
}

func exact(name string) func(string) bool { return func(n string) bool { return n == name } }

// queued sums the queen's gauges of work waiting: writes in flight, backlog.
func queued(m harness.Metrics) float64 {
	return m.Sum(func(n string) bool {
		return !strings.HasSuffix(n, "_total") && (strings.Contains(n, "in_flight") || strings.Contains(n, "backlog"))
	})
}

// accounting is the queen's own count of the worker beats it got: each is
// accepted, rejected, dropped by the subscription, or superseded by a newer
// beat of its key before it was decoded.
type accounting struct {
	accepted, rejected, dropped, superseded, coalesced float64
}

func (a accounting) total() float64 { return a.accepted + a.rejected + a.dropped + a.superseded }

// taken is what the queen took off the connection and handled.
func (a accounting) taken() float64 { return a.accepted + a.superseded }

func account(m harness.Metrics) accounting {
	return accounting{
		accepted:   m.Sum(exact("rbee_queen_beats_accepted_total"), `kind="worker"`),
		rejected:   m.Sum(counter("rejected"), `kind="worker"`),
		dropped:    m.Sum(exact("rbee_queen_beats_dropped_total")),
		superseded: m.Sum(exact("rbee_queen_beats_superseded_total"), `kind="worker"`),
		coalesced:  m.Sum(counter("coalesc")),
	}
}

// runCapacity ramps the offered load until the queen's writes fall behind,
// and takes the best sustained write rate as what the queen can write.
func runCapacity(w *world, r *result) error {
	q, o, err := w.single("queen")
	if err != nil {
		return err
	}
	defer o.close()
	defer q.Stop(10 * time.Second)
	rates := []int{5000, 10000, 15000, 20000, 25000, 30000, 40000, 60000, 80000, 120000, 160000}
	step := 4 * time.Second
	if w.opt.quick {
		rates, step = []int{10000, 20000, 40000, 60000, 80000, 120000}, 5*time.Second/2
	}
	var ramp []string
	for _, x := range rates {
		ramp = append(ramp, strconv.Itoa(x))
	}
	r.offer("a ramp of %s beats/s, %s per step, each step over as many workers beating once per %s (load generator in its own process), every beat changing `slots_busy` so that every one must be written",
		strings.Join(ramp, ", "), step, interval)
	r.offer("writes/s = growth of the `KV_rbee_workers` stream's last sequence over the second half of a step (a coalescing " +
		"queen writes fewer than it accepts); a step is kept up when the queen accepts 0.9 × offered, writes at least 0.5 × offered " +
		"and no worker of the ramp expires in it; the first step not kept up ends the ramp")
	r.offer("what the queen can write = the most writes/s of any step")
	type sample struct {
		at          time.Time
		seq, expiry uint64
		acc         float64
	}
	var samples []sample
	take := func() {
		seq, err := o.streamSeq()
		if err != nil {
			return
		}
		_, e := o.counts()
		m, _ := harness.Scrape(q.httpAddr)
		samples = append(samples, sample{time.Now(), seq, e, account(m).taken()})
	}
	rateIn := func(from, to time.Time) (writes, accepted float64, expired uint64) {
		var a, b *sample
		for i := range samples {
			s := &samples[i]
			if a == nil && !s.at.Before(from) {
				a = s
			}
			if !s.at.After(to) {
				b = s
			}
		}
		if a == nil || b == nil || !b.at.After(a.at) {
			return 0, 0, 0
		}
		d := b.at.Sub(a.at).Seconds()
		return float64(b.seq-a.seq) / d, (b.acc - a.acc) / d, b.expiry - a.expiry
	}
	l, err := w.load(q.url(), "-ramp", strings.Join(ramp, ","), "-step", step.String(), "-interval", interval.String(), "-changing")
	if err != nil {
		return err
	}
	defer l.Kill()
	best, bestAcc := 0.0, 0.0
	seen := 0
	saturated := false
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	limit := time.After(time.Duration(len(rates)+4) * step * 2)
loop:
	for {
		select {
		case <-t.C:
		case <-l.Done():
			take()
			break loop
		case <-limit:
			break loop
		}
		take()
		reps := l.reports()
		for ; seen < len(reps); seen++ {
			s := reps[seen]
			from, to := time.UnixMilli(s.FromMs), time.UnixMilli(s.ToMs)
			wr, acc, _ := rateIn(from.Add(step/2), to)
			_, _, exp := rateIn(from, to.Add(ttl))
			offered := float64(s.Sent) / to.Sub(from).Seconds()
			kept := exp == 0 && acc >= 0.9*offered && wr >= 0.5*offered
			r.fig(fmt.Sprintf("step %d/s", s.Step), "offered %.0f/s, written %.0f/s, accepted %.0f/s, %d expiries: %s",
				offered, wr, acc, exp, map[bool]string{true: "kept up", false: "not kept up"}[kept])
			w.log("capacity: step %d: offered %.0f/s written %.0f/s accepted %.0f/s expiries %d", s.Step, offered, wr, acc, exp)
			if wr > best {
				best, bestAcc = wr, acc
			}
			if !kept {
				saturated = true
				break loop
			}
		}
	}
	l.Kill()
	peak, _ := q.rss.Result()
	if !saturated {
		r.note("the queen kept up with every step; capacity is at least the best step")
	}
	if best == 0 {
		return fmt.Errorf("the queen kept up with no step of the ramp")
	}
	if w.opt.capacity == 0 {
		w.capacity = best
	} else {
		r.note("the load of the other cases is sized from -capacity %.0f, not from this measurement", w.opt.capacity)
	}
	r.figures = append([][2]string{{"what the queen can write", fmt.Sprintf("%.0f writes/s (accepting %.0f beats/s)", best, bestAcc)}}, r.figures...)
	r.fig("queen peak RSS (VmHWM)", "%s", mib(peak))
	return nil
}

// runOverload offers twice what the queen can write, TTL of 3 beats: the
// healthy workers and the load workers must not expire while they beat,
// every beat must be accepted, rejected, counted as dropped or superseded, goodbyes
// must arrive, and the queen's memory must stay bounded.
func runOverload(w *world, r *result) error {
	rate := w.opt.rate
	if rate == 0 {
		if w.capacity <= 0 {
			return fmt.Errorf("no capacity measured; give -capacity or -rate")
		}
		rate = int(math.Round(2 * w.capacity))
	}
	return overload(w, r, rate, w.opt.healthy, false, true)
}

// busyKeys and busyProbes size the busy cases: keys ÷ TTL is about 17k
// writes/s, within what the queen writes on this machine.
const (
	busyKeys   = 50_000
	busyProbes = 50
)

// runBusy: busyKeys load workers beating every interval from one process,
// busyProbes probe workers in another; with burn, a third process burns one
// core beside them. Within capacity, nothing may expire falsely.
func runBusy(burn bool) func(w *world, r *result) error {
	return func(w *world, r *result) error {
		rate := busyKeys
		if w.opt.rate != 0 {
			rate = w.opt.rate
		}
		return overload(w, r, rate, busyProbes, burn, false)
	}
}

// overload offers rate load workers beating every interval, beside healthy
// probe workers in their own process (and a process burning a core, with
// burn), and checks that no live key expires and no goodbye is lost. With
// changing, every load beat changes what a reader sees and must be written;
// without, the load workers are idle and their beats change nothing.
func overload(w *world, r *result, rate, healthy int, burn, changing bool) error {
	dur, drainMax, byes := 20*time.Second, 60*time.Second, 1000
	if w.opt.quick {
		dur, drainMax, byes = 10*time.Second, 15*time.Second, 500
	}
	byes = min(byes, rate/10)
	byeAt := dur - 5*time.Second
	if w.opt.quick {
		byeAt = dur - 3*time.Second
	}
	q, o, err := w.single("queen")
	if err != nil {
		return err
	}
	defer o.close()
	defer q.Stop(10 * time.Second)
	healthyBeats, err := o.countSubject("rbee.hb.worker." + hiveHealthy + ".>")
	if err != nil {
		return err
	}
	f, err := w.fleet("healthy", q.url(), hiveHealthy, healthy)
	if err != nil {
		return err
	}
	defer f.Kill()
	if err := waitPresent(o, hiveHealthy, healthy, 30*time.Second); err != nil {
		return err
	}
	if burn {
		b, err := harness.Start("burn", w.self, []string{"-role", "burn"}, harness.Options{})
		if err != nil {
			return err
		}
		defer b.Kill()
		r.offer("another process burns one core from before the load until the end of the case")
	}
	r.offer("%d load workers beating once per %s = %d beats/s for %s (2 × %.0f writes/s: the capacity case's measurement, or -capacity, or -rate)",
		rate, interval, rate, dur, w.capacity)
	if changing {
		r.offer("every load beat changes `slots_busy`, so every one must be written")
	} else {
		r.offer("the load workers are idle: their beats change nothing but `seq` and `sent_at_ms`")
	}
	r.offer("%d of them send a goodbye %s into the load and stop", byes, byeAt)
	r.offer("%d healthy workers (`rbee worker --simulate %d --interval %s`) in a separate process, stopped with SIGTERM (goodbyes) after the load",
		healthy, healthy, interval)
	o.resetLag()
	o.resetGaps()
	t0 := time.Now()
	l, err := w.load(q.url(), "-keys", strconv.Itoa(rate), "-duration", dur.String(), "-interval", interval.String(),
		"-goodbye-at", byeAt.String(), "-goodbyes", strconv.Itoa(byes), "-changing="+strconv.FormatBool(changing))
	if err != nil {
		return err
	}
	rep, err := l.wait(dur + 60*time.Second)
	if err != nil {
		return err
	}
	tStop := time.UnixMilli(rep.ToMs)
	accLag, seenLag := o.lag()
	w.log("overload: load sent %d beats (%d goodbyes, %d errors); draining", rep.Sent, rep.Goodbyes, rep.Errors)

	// Drain: until what was sent and what the queen counted differ by the
	// same amount for 3 s (the healthy workers still beat) while the queen's
	// gauges show nothing queued or in flight, or drainMax.
	var last accounting
	lastGap, lastChange := math.NaN(), time.Now()
	drained := false
	for deadline := time.Now().Add(drainMax); time.Now().Before(deadline); {
		if q.Exited() {
			break
		}
		hs := healthyBeats.Load()
		m, err := harness.Scrape(q.httpAddr)
		if err == nil {
			last = account(m)
			gap := float64(rep.Sent+hs) - last.total()
			if math.Abs(gap-lastGap) > float64(healthy) || queued(m) > 0 {
				lastGap, lastChange = gap, time.Now()
			} else if time.Since(lastChange) > 3*time.Second {
				drained = true
				break
			}
		}
		pause(250 * time.Millisecond)
	}
	drainedIn := time.Since(tStop) - 3*time.Second
	loadKeys := o.snapshot(prefixOf(hiveLoad))
	var lastLoadPut time.Time
	for _, s := range loadKeys {
		if s.lastPut.After(lastLoadPut) {
			lastLoadPut = s.lastPut
		}
	}
	// The healthy workers leave with goodbyes.
	tBye := time.Now()
	f.Stop(15 * time.Second)
	_ = harness.WaitFor(ttl+5*time.Second, "healthy goodbyes", func() error {
		if p, _ := o.livePresent(prefixOf(hiveHealthy), time.Time{}); p > 0 {
			return fmt.Errorf("%d still present", p)
		}
		return nil
	})
	healthySent := healthyBeats.Load()
	m, merr := harness.Scrape(q.httpAddr)
	final := account(m)
	peak, rssKilled := q.rss.Result()
	slow, lines := q.Count("slow consumer")
	errs, _ := q.Count("level=error")
	reconn, _ := q.Count("reconnected")

	isLoad := prefixOf(hiveLoad)
	isBye := func(k string) bool {
		if !isLoad(k) {
			return false
		}
		i, err := strconv.Atoi(strings.TrimPrefix(k, hiveLoad+".w"))
		return err == nil && i < byes
	}
	fhs := purges(o.removalsBetween(prefixOf(hiveHealthy), t0, tBye))
	byeAtT := time.UnixMilli(rep.ByeAtMs)
	fls := append(purges(o.removalsBetween(func(k string) bool { return isLoad(k) && !isBye(k) }, t0, tStop)),
		purges(o.removalsBetween(isBye, t0, byeAtT))...)
	falseHealthy, falseLoad := len(fhs), len(fls)
	// A goodbye arrived when its key ends with a delete marker, also one
	// written over an expiry's marker (the entry expired while it beat).
	var byeDel, byeOverExpiry, byePurge int
	for k, s := range loadKeys {
		if isBye(k) {
			if s.op == jetstream.KeyValueDelete {
				byeDel++
			}
			byeOverExpiry += s.delsAfterExpiry
			byePurge += s.purges
		}
	}
	lostLoadByes := byes - byeDel
	hs := o.snapshot(prefixOf(hiveHealthy))
	lostHealthyByes := len(hs) - len(removalsDel(o.removalsBetween(prefixOf(hiveHealthy), tBye, time.Now())))
	sent := float64(rep.Sent + healthySent)
	unaccounted := sent - final.total()
	var maxGap time.Duration
	for _, s := range hs {
		maxGap = max(maxGap, s.maxGap)
	}

	r.fig("offered", "%.0f beats/s (%d beats in %s; %d publish errors)", float64(rep.Sent)/tStop.Sub(time.UnixMilli(rep.FromMs)).Seconds(), rep.Sent, dur, rep.Errors)
	r.fig("healthy beats seen on the broker", "%d", healthySent)
	if merr != nil {
		r.fig("queen metrics at the end", "unreadable: %v", merr)
	}
	r.fig("queen accounting (worker beats)", "accepted %.0f, rejected %.0f, counted as dropped %.0f, superseded before admitting %.0f; coalesced after accepting %.0f",
		final.accepted, final.rejected, final.dropped, final.superseded, final.coalesced)
	r.fig("registry writes", "%.0f acknowledged; failed: %.0f re-read (the key changed since the queen last saw it), %.0f refused after a re-read, %.0f retried, %.0f lost; %.0f shed stale",
		m.Sum(exact("rbee_queen_kv_write_seconds_count")), m.Sum(counter("kv_write_failures"), `outcome="reread"`),
		m.Sum(counter("kv_write_failures"), `outcome="refused"`), m.Sum(counter("kv_write_failures"), `outcome="retried"`),
		m.Sum(counter("kv_write_failures"), `outcome="lost"`), m.Sum(counter("beats_shed"), `reason="stale"`))
	r.fig("sent − (accepted + rejected + dropped + superseded)", "%.0f (%.1f %% of sent)", unaccounted, 100*unaccounted/math.Max(sent, 1))
	if drained {
		r.fig("queen's counts settled", "%s after the load's end", drainedIn.Round(100*time.Millisecond))
	} else {
		r.fig("queen's counts settled", "not within %s of the load's end", drainMax)
	}
	r.fig("false expiries: healthy workers", "%d, of %d of the %d workers", falseHealthy, distinct(fhs), healthy)
	r.fig("false expiries: load workers while beating", "%d, of %d of the %d workers", falseLoad, distinct(fls), rate)
	r.fig("when the false expiries happened (s after the load started: count)", "healthy %s; load %s; the load stopped at +%.1fs",
		bySecond(fhs, t0), bySecond(fls, t0), tStop.Sub(t0).Seconds())
	r.fig("load goodbyes", "%d sent at +%s: %d keys ended by a delete marker (%d written over an expiry's marker); %d expiry markers among them before",
		byes, byeAtT.Sub(t0).Round(time.Millisecond), byeDel, byeOverExpiry, byePurge)
	var byeKeys []string
	for i := range byes {
		byeKeys = append(byeKeys, fmt.Sprintf("%s.w%d", hiveLoad, i))
	}
	if d, p, v, n, err := o.lastOps(byeKeys); err != nil {
		r.fig("load goodbyes' keys in the store", "unreadable: %v", err)
	} else {
		r.fig("load goodbyes' keys in the store (last message of each)", "%d delete markers, %d expiry markers, %d values, %d none", d, p, v, n)
	}
	r.fig("the queen's own count (worker goodbyes accepted; left and expired events of its registry watch)", "%.0f; %.0f left, %.0f expired",
		m.Sum(exact("rbee_queen_goodbyes_total"), `kind="worker"`), m.Sum(exact("rbee_registry_events_total"), `kind="worker"`, `event="left"`),
		m.Sum(exact("rbee_registry_events_total"), `kind="worker"`, `event="expired"`))
	r.fig("healthy goodbyes (SIGTERM after the load)", "%d workers: %d delete markers", len(hs), len(hs)-lostHealthyByes)
	r.fig("accept lag of healthy beats (received_at − sent_at)", "%s", accLag)
	r.fig("beat → visible in KV, healthy workers", "%s", seenLag)
	r.fig("longest gap between two writes of a healthy worker", "%s", maxGap.Round(time.Millisecond))
	if !lastLoadPut.IsZero() {
		r.fig("load writes after the load stopped", "for %s", lastLoadPut.Sub(tStop).Round(time.Millisecond))
	}
	r.fig("queen peak RSS (VmHWM)", "%s%s", mib(peak), map[bool]string{true: " (killed at the safety limit)", false: ""}[rssKilled])
	r.fig("queen log", "%d lines: %d 'slow consumer', %d errors, %d 'reconnected'", lines, slow, errs, reconn)

	r.expect("0 false expiries (healthy)", falseHealthy == 0, "%d", falseHealthy)
	r.expect("0 false expiries (load workers while beating)", falseLoad == 0, "%d", falseLoad)
	r.expect("0 silent drops", merr == nil && drained && math.Abs(unaccounted) < 0.5, "%.0f unaccounted", unaccounted)
	r.expect("0 lost goodbyes (under load)", lostLoadByes == 0, "%d of %d lost", lostLoadByes, byes)
	r.expect("0 lost goodbyes (healthy, after load)", lostHealthyByes == 0, "%d of %d lost", lostHealthyByes, len(hs))
	limit := w.opt.rssLimit
	if limit == 0 {
		limit = int64(rate+healthy) * w.opt.rssPerKey
	}
	r.expect(fmt.Sprintf("bounded RSS (≤ %s: %s per key offered)", mib(limit), kib(limit/int64(rate+healthy))),
		!rssKilled && peak <= limit, "%s (%s per key)", mib(peak), kib(peak/int64(rate+healthy)))
	if r.failed() {
		r.note("last lines of the queen's log: `%s`", cell(lastLines(q.Output(), 4)))
	}
	return nil
}

// bySecond counts removals by whole seconds after t0: "+3s: 12, +4s: 1".
func bySecond(rs []removal, t0 time.Time) string {
	if len(rs) == 0 {
		return "none"
	}
	n := map[int]int{}
	var secs []int
	for _, r := range rs {
		s := int(r.at.Sub(t0) / time.Second)
		if n[s] == 0 {
			secs = append(secs, s)
		}
		n[s]++
	}
	sort.Ints(secs)
	parts := make([]string, len(secs))
	for i, s := range secs {
		parts[i] = fmt.Sprintf("+%ds: %d", s, n[s])
	}
	return strings.Join(parts, ", ")
}

// distinct returns how many keys the removals concern.
func distinct(rs []removal) int {
	m := map[string]bool{}
	for _, r := range rs {
		m[r.key] = true
	}
	return len(m)
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	for i := range l {
		if len(l[i]) > 240 {
			l[i] = l[i][:240] + "…"
		}
	}
	return strings.Join(l, " ⏎ ")
}

func purges(rs []removal) []removal {
	var out []removal
	for _, r := range rs {
		if r.purge {
			out = append(out, r)
		}
	}
	return out
}

func removalsDel(rs []removal) []removal {
	var out []removal
	for _, r := range rs {
		if !r.purge {
			out = append(out, r)
		}
	}
	return out
}

// maxGapOf returns the longest gap between two writes of any key of hive.
func maxGapOf(o *observer, hive string) time.Duration {
	var g time.Duration
	for _, s := range o.snapshot(prefixOf(hive)) {
		g = max(g, s.maxGap)
	}
	return g
}

// queenTTL is a queen's own entry's TTL: --missed × its 5 s interval.
const queenTTL = missed * 5 * time.Second

// runPause pauses one of two queens for 2 × TTL; long: for longer than the
// paused queen's own entry's TTL, on a broker with nats-server's default
// pings, which keeps handing it its share meanwhile, with the goodbyes after
// its entry expired.
func runPause(long bool) func(w *world, r *result) error {
	return func(w *world, r *result) error { return pauseQueen(w, r, long) }
}

func pauseQueen(w *world, r *result, long bool) error {
	ports, err := harness.FreePorts(3)
	if err != nil {
		return err
	}
	var extra []string
	held, byeAt := 2*ttl, ttl
	if long {
		conf := filepath.Join(w.dir("queen-a-conf"), "pings.conf")
		if err := os.WriteFile(conf, []byte("ping_interval: \"2m\"\nping_max: 2\n"), 0o600); err != nil {
			return err
		}
		extra = []string{"--config", conf}
		held, byeAt = queenTTL+3*ttl, queenTTL+ttl
	}
	qa, err := w.startQueen("queen-a", ports[0], "", ports[1], w.dir("queen-a"), extra...)
	if err != nil {
		return err
	}
	defer qa.Stop(10 * time.Second)
	qb, err := w.startQueen("queen-b", 0, qa.url(), ports[2], "")
	if err != nil {
		return err
	}
	defer qb.Stop(10 * time.Second)
	o, err := newObserver(qa.url(), notLoad)
	if err != nil {
		return err
	}
	defer o.close()
	f, err := w.fleet("healthy", qa.url(), hiveHealthy, w.opt.healthy)
	if err != nil {
		return err
	}
	defer f.Kill()
	leavers := max(w.opt.healthy/4, 1)
	lf, err := w.fleet("leavers", qa.url(), hiveLeave, leavers)
	if err != nil {
		return err
	}
	defer lf.Kill()
	if err := waitPresent(o, hiveHealthy, w.opt.healthy, 30*time.Second); err != nil {
		return err
	}
	if err := waitPresent(o, hiveLeave, leavers, 30*time.Second); err != nil {
		return err
	}
	pause(2 * interval) // both queens take their share
	r.offer("two queens in one queue group: queen A with the embedded broker, queen B on A's broker (`--nats-url`)")
	if long {
		r.offer("the broker pings as nats-server does by default (`ping_interval: \"2m\"`, `ping_max: 2` in A's `--config`): it drops a stopped client after 6–8 minutes, not seconds")
	}
	r.offer("%d healthy workers beating every %s; queen B stopped with SIGSTOP for %s (its own entry's TTL is %s), then SIGCONT; watched for one TTL more",
		w.opt.healthy, interval, held, queenTTL)
	r.offer("%d more workers (their own process) stopped with SIGTERM (goodbyes) %s into the pause: the last beats and goodbyes the group hands queen B wait in its socket", leavers, byeAt)
	o.resetGaps()
	o.resetLag()
	tP := time.Now()
	if err := qb.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	pause(byeAt)
	lf.Stop(10 * time.Second)
	pause(held - time.Since(tP))
	_ = qb.Signal(syscall.SIGCONT)
	pause(ttl + interval)
	rem := purges(o.removalsBetween(prefixOf(hiveHealthy), tP, time.Now()))
	acc, seen := o.lag()
	// The leavers' keys by how they ended; back: deleted, then written again.
	var left, expired, alive, back int
	for _, s := range o.snapshot(prefixOf(hiveLeave)) {
		switch s.op {
		case jetstream.KeyValueDelete:
			left++
		case jetstream.KeyValuePurge:
			expired++
		default:
			alive++
		}
		if s.dels > 0 && s.op != jetstream.KeyValueDelete {
			back++
		}
	}
	r.fig("false expiries", "%d of %d", len(rem), w.opt.healthy)
	r.fig("goodbyes during the pause", "%d workers: %d ended by a delete marker, %d by an expiry, %d still present; %d written again after their delete",
		leavers, left, expired, alive, back)
	r.fig("accept lag (received_at − sent_at)", "%s", acc)
	r.fig("beat → visible in KV", "%s", seen)
	r.fig("longest gap between two writes of a worker", "%s", maxGapOf(o, hiveHealthy).Round(time.Millisecond))
	r.fig("queen B after SIGCONT", "%s", map[bool]string{true: "exited", false: "running"}[qb.Exited()])
	r.expect("0 false expiries", len(rem) == 0, "%d", len(rem))
	r.expect("goodbyes arrive as left", left == leavers, "%d of %d", left, leavers)
	return nil
}

// runKill9 kills the queen (and its embedded broker) with SIGKILL mid-ingest
// and starts it again half an interval later on the same data.
func runKill9(w *world, r *result) error {
	q, o, err := w.single("queen")
	if err != nil {
		return err
	}
	defer o.close()
	defer q.Stop(10 * time.Second)
	f, err := w.fleet("healthy", q.url(), hiveHealthy, w.opt.healthy)
	if err != nil {
		return err
	}
	defer f.Kill()
	rate := 5000
	if w.capacity > 0 {
		rate = int(0.7 * w.capacity)
	}
	dur := 30 * time.Second
	l, err := w.load(q.url(), "-keys", strconv.Itoa(rate), "-duration", dur.String(), "-interval", interval.String())
	if err != nil {
		return err
	}
	defer l.Kill()
	if err := waitPresent(o, hiveHealthy, w.opt.healthy, 30*time.Second); err != nil {
		return err
	}
	if err := waitPresent(o, hiveLoad, rate, 30*time.Second); err != nil {
		return err
	}
	pause(2 * interval)
	down := interval / 2
	r.offer("%d healthy workers and %d load workers (%d beats/s, 0.7 × capacity when measured) beating every %s", w.opt.healthy, rate, rate, interval)
	r.offer("the queen (with its embedded broker) killed with SIGKILL, started again %s later on the same data folder and ports", down)
	o.resetGaps()
	tK := time.Now()
	q.Kill()
	q.rss.Result()
	pause(down)
	tStart := time.Now()
	if err := w.launch("queen", q); err != nil {
		return err
	}
	ready := time.Since(tStart)
	rec, ferr := waitFresh(o, hiveHealthy, w.opt.healthy, tStart, 20*time.Second)
	pause(ttl + 2*interval)
	end := time.Now()
	fh := purges(o.removalsBetween(prefixOf(hiveHealthy), tK, end))
	fl := purges(o.removalsBetween(prefixOf(hiveLoad), tK, end))
	lr := l.Exited()
	r.fig("false expiries: healthy workers", "%d of %d", len(fh), w.opt.healthy)
	r.fig("false expiries: load workers", "%d of %d", len(fl), rate)
	r.fig("restarted queen answers /healthz", "%s after its start", ready.Round(time.Millisecond))
	if ferr != nil {
		r.fig("every healthy worker written again", "not within 20 s: %v", ferr)
	} else {
		r.fig("every healthy worker written again", "%s after the restart", rec.Round(time.Millisecond))
	}
	r.fig("longest gap between two writes of a healthy worker", "%s", maxGapOf(o, hiveHealthy).Round(time.Millisecond))
	if m, err := harness.Scrape(q.httpAddr); err == nil {
		r.fig("restarted queen's registry writes", "%.0f acknowledged; failed: %.0f re-read, %.0f refused after a re-read; %.0f shed stale",
			m.Sum(exact("rbee_queen_kv_write_seconds_count")), m.Sum(counter("kv_write_failures"), `outcome="reread"`),
			m.Sum(counter("kv_write_failures"), `outcome="refused"`), m.Sum(counter("beats_shed"), `reason="stale"`))
	}
	for _, line := range strings.Split(q.Output(), "\n") {
		if strings.Contains(line, "registry loaded") || strings.Contains(line, "registry not loaded") || strings.Contains(line, "accepting heartbeats") {
			r.fig("restarted queen's log", "`%s`", cell(line))
		}
	}
	if lr {
		r.note("the load generator ended before the window closed")
	}
	r.expect("0 false expiries (healthy)", len(fh) == 0, "%d", len(fh))
	r.expect("0 false expiries (load)", len(fl) == 0, "%d", len(fl))
	return nil
}

// runPauseSingle pauses the only queen for 2 × TTL, on a broker of its own
// (here in the chaos process, standing for an external server), so that the
// TTLs run on while the queen is frozen. Expiries are expected; the queen
// must report them as a disruption, and the registry must be whole again
// within one interval of the resume.
func runPauseSingle(w *world, r *result) error {
	ports, err := harness.FreePorts(2)
	if err != nil {
		return err
	}
	bc := embedded.DefaultConfig(w.dir("broker"))
	bc.Port = ports[0]
	srv, err := embedded.New(bc)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	q, err := w.startQueen("queen", 0, srv.ClientURL(), ports[1], "")
	if err != nil {
		return err
	}
	defer q.Stop(10 * time.Second)
	o, err := newObserver(srv.ClientURL(), notLoad)
	if err != nil {
		return err
	}
	defer o.close()
	f, err := w.fleet("healthy", srv.ClientURL(), hiveHealthy, w.opt.healthy)
	if err != nil {
		return err
	}
	defer f.Kill()
	if err := waitPresent(o, hiveHealthy, w.opt.healthy, 30*time.Second); err != nil {
		return err
	}
	pause(2 * interval)
	held := 2 * ttl
	r.offer("one queen (`rbee queen --nats-url`) on a broker of its own; %d healthy workers beating every %s", w.opt.healthy, interval)
	r.offer("the queen stopped with SIGSTOP for %s, then SIGCONT", held)
	tP := time.Now()
	if err := q.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	pause(held)
	_ = q.Signal(syscall.SIGCONT)
	tR := time.Now()
	// Whole again: every healthy worker present and written since the resume.
	whole, werr := waitFresh(o, hiveHealthy, w.opt.healthy, tR, 20*time.Second)
	// Disruption reported: the queen's beat, /healthz or rbee_queen_state.
	var seen string
	_ = harness.WaitFor(2*ttl+6*time.Second, "disruption reported", func() error {
		for id, b := range o.queenStates() {
			if b.at.After(tR) && b.state == "disrupted" {
				seen = "queen beat " + id + ": disrupted " + b.reason
				return nil
			}
		}
		if m, err := harness.Scrape(q.httpAddr); err == nil && stateGauge(m) == "disrupted" {
			seen = "rbee_queen_state{state=\"disrupted\"} 1"
			return nil
		}
		if code, body, err := harness.Healthz(q.httpAddr); err == nil && code != 200 && strings.Contains(body, "disrupt") {
			seen = fmt.Sprintf("/healthz %d %s", code, body)
			return nil
		}
		return errNotSeen
	})
	exp := purges(o.removalsBetween(prefixOf(hiveHealthy), tP, time.Now()))
	r.fig("expiries while the queen was frozen", "%d, of %d of the %d workers", len(exp), distinct(exp), w.opt.healthy)
	if werr != nil {
		r.fig("registry whole again", "not within 20 s of the resume: %v", werr)
	} else {
		r.fig("registry whole again", "%s after the resume", whole.Round(time.Millisecond))
	}
	r.fig("disruption reported", "%s", map[bool]string{true: seen, false: "no"}[seen != ""])
	r.expect("expiries reported as a disruption", len(exp) == 0 || seen != "", "%s", map[bool]string{true: seen, false: "not reported"}[seen != ""])
	r.expect("registry whole within one interval of the resume", werr == nil && whole <= interval, "%s",
		map[bool]string{true: whole.Round(time.Millisecond).String(), false: "not within 20 s"}[werr == nil])
	return nil
}

var errNotSeen = errors.New("not seen")
