package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/fleet"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

func runDecode(e *env, args []string) error {
	fs := newFlagSet(e, "decode")
	compact := fs.Bool("compact", true, "one line of JSON (false: indented)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	data, err := io.ReadAll(io.LimitReader(e.stdin, 16*wire.MaxPayload+1))
	if err != nil {
		return fmt.Errorf("read stdin: %w", err)
	}
	v, err := wire.DecodeAny(data)
	if err != nil {
		return fmt.Errorf("stdin is not msgpack: %w", err)
	}
	enc := json.NewEncoder(e.stdout)
	if !*compact {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

// MinServerVersion is the oldest nats-server rbee works with: 2.11 brought
// per-message TTLs (Nats-TTL) and the KV limit markers that make an expiry
// visible to watchers.
const MinServerVersion = "2.11.0"

// serverAtLeast reports whether version (e.g. "2.10.24") is min or newer.
func serverAtLeast(version, min string) bool {
	parse := func(v string) [3]int {
		var out [3]int
		v, _, _ = strings.Cut(strings.TrimPrefix(v, "v"), "-")
		for i, p := range strings.SplitN(v, ".", 3) {
			out[i], _ = strconv.Atoi(p)
		}
		return out
	}
	a, b := parse(version), parse(min)
	for i := range a {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return true
}

// tool is the connection of a read-only command (status, watch, events,
// check). Its ctx ends, with the reason as its cause, when the server
// reports a permissions violation: a request the identity may not make is
// otherwise only a timeout.
type tool struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (t *tool) Close() {
	t.cancel(nil)
	t.nc.Close()
}

// errf returns err, or the cause of t's ctx when it ended with one, so
// that a refused request reads as the permissions violation behind it.
func (t *tool) errf(err error) error {
	if c := context.Cause(t.ctx); c != nil && !errors.Is(c, context.Canceled) && !errors.Is(c, context.DeadlineExceeded) {
		return c
	}
	return err
}

// errPermission wraps a permissions violation reported by the server.
var errPermission = errors.New("permissions violation")

func (c *common) openTool(e *env, name string) (*tool, error) {
	ctx, cancel := context.WithCancelCause(e.ctx)
	// The tools report connection trouble themselves, once, as their result.
	cfg := c.connConfig(name, nil)
	cfg.OnAsyncError = func(err error) {
		msg := err.Error()
		if i := strings.Index(strings.ToLower(msg), "permissions violation for "); i >= 0 {
			cancel(fmt.Errorf("%w: the server refused %s (check the identity's permissions or --creds)", errPermission, msg[i+len("permissions violation for "):]))
		}
	}
	nc, err := dial(cfg)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	if v := nc.ConnectedServerVersion(); !serverAtLeast(v, MinServerVersion) {
		nc.Close()
		cancel(nil)
		return nil, fmt.Errorf("nats-server %s at %s is too old: rbee needs nats-server %s or later (per-message TTLs and KV limit markers)",
			v, c.natsURL, MinServerVersion)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		cancel(nil)
		return nil, err
	}
	return &tool{nc: nc, js: js, ctx: ctx, cancel: cancel}, nil
}

// noRegistry explains missing buckets.
func (c *common) noRegistry(err error) error {
	return fmt.Errorf("no registry at %s (is a queen running?): %w", c.natsURL, err)
}

// filters selects the entries rbee status shows.
type filters struct {
	hive, model string
	status      []wire.Status
	notAlive    bool
}

func (f *filters) register(fs *flag.FlagSet) (status *string) {
	fs.StringVar(&f.hive, "hive", "", "show only this hive and its workers")
	fs.StringVar(&f.model, "model", "", "show only workers serving this model")
	fs.BoolVar(&f.notAlive, "not-alive", false, "show only workers and hives that are not alive (disconnected or stalled)")
	return fs.String("status", "", "show only workers in these states, comma-separated (starting, ready, busy, draining, stopping, stopped)")
}

func (f *filters) parse(status string) error {
	if f.hive != "" {
		if err := subjects.ValidateID("--hive", f.hive); err != nil {
			return usageError{err.Error()}
		}
	}
	if status == "" {
		return nil
	}
	for _, s := range strings.Split(status, ",") {
		st := wire.Status(strings.TrimSpace(s))
		if !st.Valid() {
			return usagef("--status %q: want starting, ready, busy, draining, stopping or stopped", s)
		}
		f.status = append(f.status, st)
	}
	return nil
}

func (f *filters) worker(w *wire.WorkerEntry) bool {
	if f.hive != "" && w.HiveID != f.hive {
		return false
	}
	if f.model != "" && w.ModelID != f.model {
		return false
	}
	if f.notAlive && w.Liveness.OrAlive() == wire.LivenessAlive {
		return false
	}
	if len(f.status) == 0 {
		return true
	}
	for _, s := range f.status {
		if w.Status == s {
			return true
		}
	}
	return false
}

func (f *filters) apply(workers []*wire.WorkerEntry, hives []*wire.HiveEntry) ([]*wire.WorkerEntry, []*wire.HiveEntry) {
	var ws []*wire.WorkerEntry
	for _, w := range workers {
		if f.worker(w) {
			ws = append(ws, w)
		}
	}
	var hs []*wire.HiveEntry
	for _, h := range hives {
		if (f.hive == "" || h.HiveID == f.hive) && (!f.notAlive || h.Liveness.OrAlive() != wire.LivenessAlive) {
			hs = append(hs, h)
		}
	}
	return ws, hs
}

func runStatus(e *env, args []string) error {
	var c common
	var f filters
	fs := newFlagSet(e, "status")
	c.register(fs, DefaultURL)
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	status := f.register(fs)
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if err := f.parse(*status); err != nil {
		return err
	}
	c.logLevel = "error"
	t, err := c.openTool(e, "rbee-status")
	if err != nil {
		return err
	}
	defer t.Close()
	ctx, cancel := context.WithTimeout(t.ctx, 10*time.Second)
	defer cancel()
	workers, hives, err := registry.Snapshot(ctx, t.js, c.scheme())
	if err != nil {
		if registry.IsNotFound(err) {
			return c.noRegistry(err)
		}
		return t.errf(err)
	}
	queens, qerr := readQueens(ctx, t.js, c.scheme())
	if qerr != nil && !errors.Is(qerr, jetstream.ErrBucketNotFound) {
		if err := t.errf(nil); err != nil {
			return err // a permissions violation
		}
		// The registry is what status is for: the queens' own state is extra.
		fmt.Fprintf(e.stderr, "rbee status: queens not shown: %s\n", termSafe(oneLine(qerr.Error())))
	}
	workers, hives = f.apply(workers, hives)
	if *asJSON {
		sortProblemsFirst(workers, hives)
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"workers": workers, "hives": hives, "queens": queens, "models": fleet.Summarize(workers)})
	}
	if qerr == nil {
		printQueens(e.stdout, queens, time.Now())
	}
	printStatus(e.stdout, workers, hives, time.Now())
	return nil
}

// readQueens returns the entries of the queen registry bucket, or an error
// wrapping jetstream.ErrBucketNotFound when no queen that beats has run.
func readQueens(ctx context.Context, js jetstream.JetStream, s subjects.Scheme) ([]*wire.QueenEntry, error) {
	kv, err := js.KeyValue(ctx, s.QueensBucket())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.QueensBucket(), err)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []*wire.QueenEntry
	for key := range lister.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue // expired between list and get
		}
		q, err := wire.DecodeQueenEntry(e.Value())
		if err != nil {
			continue
		}
		out = append(out, q)
	}
	return out, nil
}

func runWatch(e *env, args []string) error {
	var c common
	fs := newFlagSet(e, "watch")
	c.register(fs, DefaultURL)
	asJSON := fs.Bool("json", false, "print one JSON object per event")
	sinceFlag := fs.String("since", "", "first replay the event history since this long ago (1h, 2d) or this time (RFC 3339), then follow")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	var since time.Time
	if *sinceFlag != "" {
		var err error
		if since, err = parseSince(*sinceFlag, time.Now()); err != nil {
			return err
		}
	}
	t, err := c.openTool(e, "rbee-watch")
	if err != nil {
		return err
	}
	defer t.Close()
	// The banner goes to stderr in JSON mode so stdout stays one event per line.
	banner := e.stdout
	if *asJSON {
		banner = e.stderr
	}
	if !since.IsZero() {
		fmt.Fprintf(banner, "replaying events since %s from %s, then following\n", since.Local().Format(time.DateTime), c.natsURL)
		q := events.Query{Since: since, Follow: true, CaughtUp: func() { fmt.Fprintln(banner, "--- history replayed; following ---") }}
		return c.printHistory(e, t, q, *asJSON)
	}

	out := make(chan registry.Event, 1024)
	ctx, cancel := context.WithTimeout(t.ctx, 10*time.Second)
	w, err := registry.Watch(t.ctx, t.js, registry.Config{Scheme: c.scheme(), OnEvent: func(ev registry.Event) { out <- ev }})
	if err == nil {
		defer w.Stop()
		err = w.WaitReady(ctx)
	}
	cancel()
	if err != nil {
		if registry.IsNotFound(err) {
			return c.noRegistry(err)
		}
		return t.errf(err)
	}
	nw, nh := w.Sizes()
	fmt.Fprintf(banner, "watching %s: %d workers, %d hives live\n", c.natsURL, nw, nh)
	enc := json.NewEncoder(e.stdout)
	conn := t.nc.StatusChanged(nats.DISCONNECTED, nats.CONNECTED)
	defer t.nc.RemoveStatusListener(conn)
	for {
		select {
		case <-t.ctx.Done():
			return t.errf(nil)
		case st := <-conn:
			if st == nats.DISCONNECTED {
				fmt.Fprintln(e.stderr, "disconnected from NATS; reconnecting")
			} else {
				fmt.Fprintf(e.stderr, "reconnected to %s\n", t.nc.ConnectedUrlRedacted())
			}
		case ev := <-out:
			if *asJSON {
				if err := enc.Encode(ev); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintln(e.stdout, formatEvent(ev))
		}
	}
}

func runEvents(e *env, args []string) error {
	var c common
	fs := newFlagSet(e, "events")
	c.register(fs, DefaultURL)
	hiveID := fs.String("hive", "", "only the events of this hive and its workers")
	sinceFlag := fs.String("since", "24h", "from this long ago (30m, 24h, 7d) or this time (RFC 3339); 0 for the whole history")
	follow := fs.Bool("follow", false, "keep printing new events after the history")
	asJSON := fs.Bool("json", false, "print one JSON object per event")
	var include, exclude listFlag
	fs.Var(&include, "event", "only these events, comma-separated or repeated: "+eventNames())
	fs.Var(&exclude, "exclude", "leave these events out, comma-separated or repeated (default: updated, the status flips, unless --event or --all)")
	all := fs.Bool("all", false, "every event, status flips (updated) included")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	filter := events.LivenessChanges()
	switch {
	case *all && (len(include) > 0 || len(exclude) > 0):
		return usagef("--all goes with neither --event nor --exclude")
	case *all:
		filter = events.Filter{}
	case len(include) > 0 || len(exclude) > 0:
		var err error
		if filter, err = events.ParseFilter(include, exclude); err != nil {
			return usageError{err.Error()}
		}
	}
	if *hiveID != "" {
		if err := subjects.ValidateID("--hive", *hiveID); err != nil {
			return usageError{err.Error()}
		}
	}
	var since time.Time
	if *sinceFlag != "0" {
		var err error
		if since, err = parseSince(*sinceFlag, time.Now()); err != nil {
			return err
		}
	}
	c.logLevel = "error"
	t, err := c.openTool(e, "rbee-events")
	if err != nil {
		return err
	}
	defer t.Close()
	return c.printHistory(e, t, events.Query{Since: since, HiveID: *hiveID, Filter: filter, Follow: *follow}, *asJSON)
}

// listFlag is a flag that may be repeated; each value is kept.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func eventNames() string {
	names := make([]string, len(registry.EventTypes))
	for i, t := range registry.EventTypes {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// printHistory prints the events of q, one per line.
func (c *common) printHistory(e *env, t *tool, q events.Query, asJSON bool) error {
	enc := json.NewEncoder(e.stdout)
	err := events.Read(t.ctx, t.js, c.scheme(), q, func(r events.Record) error {
		switch {
		case r.Err != nil:
			fmt.Fprintf(e.stderr, "event %d on %s: %v\n", r.Seq, termSafe(r.Subject), r.Err)
			return nil
		case asJSON:
			return enc.Encode(r.Event)
		}
		_, err := fmt.Fprintln(e.stdout, formatHistoryEvent(r.Event))
		return err
	})
	if errors.Is(err, events.ErrNoHistory) {
		return fmt.Errorf("no event history at %s: stream %s does not exist (a queen that keeps the history creates it)", c.natsURL, c.scheme().EventsStream())
	}
	if err != nil {
		return t.errf(err)
	}
	return nil
}

// parseSince reads --since: a duration back from now (Go syntax, plus a
// whole number of days such as 7d) or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if days, err := strconv.Atoi(n); err == nil && days >= 0 {
			return now.Add(-time.Duration(days) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if ts, err := time.Parse(time.RFC3339, s); err == nil {
		return ts, nil
	}
	return time.Time{}, usagef("--since %q: want a duration such as 1h or 7d, or an RFC 3339 time such as 2026-01-31T22:00:00Z", s)
}

// checkError is a check's negative answer: exit code 1 with its reason.
type checkError struct{ msg string }

func (e checkError) Error() string { return e.msg }

func runCheck(e *env, args []string) error {
	var c common
	fs := newFlagSet(e, "check")
	c.register(fs, DefaultURL)
	// Flags may come before, between or after the two arguments.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	if err := c.parse(fs, nil); err != nil {
		return err
	}
	if len(pos) >= 1 && pos[0] == "queen" && len(pos) <= 2 {
		addr := "127.0.0.1:8500"
		if len(pos) == 2 {
			addr = pos[1]
		}
		return checkQueen(e, addr)
	}
	if len(pos) != 2 {
		return usagef("want 'worker HIVE.WORKER', 'hive HIVE' or 'queen [HTTP-ADDR]', got %d arguments", len(pos))
	}
	kind, key := pos[0], pos[1]
	var bucket string
	switch kind {
	case "worker":
		if _, _, err := subjects.ParseWorkerKey(key); err != nil {
			return usageError{err.Error()}
		}
		bucket = c.scheme().WorkersBucket()
	case "hive":
		if err := subjects.ValidateID("hive id", key); err != nil {
			return usageError{err.Error()}
		}
		bucket = c.scheme().HivesBucket()
	default:
		return usagef("%q: want worker, hive or queen", kind)
	}
	c.logLevel = "error"
	t, err := c.openTool(e, "rbee-check")
	if err != nil {
		return err
	}
	defer t.Close()
	ctx, cancel := context.WithTimeout(t.ctx, 5*time.Second)
	defer cancel()
	kv, err := t.js.KeyValue(ctx, bucket)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return c.noRegistry(err)
		}
		return t.errf(err)
	}
	entry, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return checkError{fmt.Sprintf("%s %s is not in the registry (it left, expired or never beat)", kind, key)}
	}
	if err != nil {
		return t.errf(err)
	}
	now := time.Now().UnixMilli()
	var rec wire.Received
	var state string
	if kind == "worker" {
		w, err := wire.DecodeWorkerEntry(entry.Value())
		if err != nil {
			return fmt.Errorf("%s %s: undecodable entry: %w", kind, key, err)
		}
		rec, state = w.Received, fmt.Sprintf("%s, %s", w.Status, w.Health)
	} else {
		h, err := wire.DecodeHiveEntry(entry.Value())
		if err != nil {
			return fmt.Errorf("%s %s: undecodable entry: %w", kind, key, err)
		}
		rec, state = h.Received, string(h.Health)
	}
	if l := rec.Liveness; l != "" && l != wire.LivenessAlive {
		return checkError{fmt.Sprintf("%s %s is %s (for %s; %s, last beat %s ago)", kind, key, l, age(now, rec.LivenessSinceMs), state, age(now, rec.ReceivedAtMs))}
	}
	fmt.Fprintf(e.stdout, "%s %s is alive (%s, last beat %s ago)\n", kind, key, termSafe(state), age(now, rec.ReceivedAtMs))
	return nil
}

// checkQueen asks the queen's HTTP API at addr (host:port) for /healthz, as
// a container's health check does: the queen's NATS connection, JetStream
// and its own state are all well.
func checkQueen(e *env, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return usagef("queen %q: want the queen's --http address host:port", addr)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return usageError{err.Error()}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return checkError{fmt.Sprintf("queen at %s does not answer: %v (is rbee queen running with --http %s?)", addr, err, addr)}
	}
	defer resp.Body.Close()
	var body struct{ Status, Reason string }
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		return checkError{fmt.Sprintf("queen at %s is %s: %s (HTTP %d)", addr, body.Status, body.Reason, resp.StatusCode)}
	}
	fmt.Fprintf(e.stdout, "queen at %s is %s\n", addr, termSafe(body.Status))
	return nil
}
