package events

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"golang.org/x/time/rate"
)

// Schema is the Rbee-Schema header value of an event message.
const Schema = "event/1"

// Config configures a Publisher.
type Config struct {
	// Scheme names the subjects the events go to.
	Scheme subjects.Scheme
	// QueenID is written into every event (queen_id): who saw the change.
	QueenID string
	// Buffer is how many events may wait to be published; beyond it events
	// are dropped, counted and logged.
	Buffer int
	// Timeout bounds one publish and its acknowledgement.
	Timeout time.Duration
	// Retries is how many times a failed publish is tried again.
	Retries int
	// RetryWait is the pause before a retry.
	RetryWait time.Duration
	// Logger receives the publisher's log; nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns a Config for the default scheme.
func DefaultConfig(queenID string) Config {
	return Config{
		Scheme:    subjects.Default(),
		QueenID:   queenID,
		Buffer:    16384, // events; a mass expiry of 16 Ki entries fits
		Timeout:   5 * time.Second,
		Retries:   3,
		RetryWait: 250 * time.Millisecond,
	}
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c Config) Validate() error {
	switch {
	case c.Scheme.Prefix() == "":
		return fmt.Errorf("%w: no subject scheme", ErrInvalidConfig)
	case c.Buffer < 1:
		return fmt.Errorf("%w: buffer %d, want at least 1", ErrInvalidConfig, c.Buffer)
	case c.Timeout <= 0:
		return fmt.Errorf("%w: timeout %s, want more than 0", ErrInvalidConfig, c.Timeout)
	case c.Retries < 0 || c.RetryWait < 0:
		return fmt.Errorf("%w: negative retries or retry wait", ErrInvalidConfig)
	}
	return nil
}

// Stats counts what a Publisher did.
type Stats struct {
	// Published counts events the stream acknowledged as new.
	Published uint64
	// Duplicates counts events the stream already held (another queen stored them).
	Duplicates uint64
	// Dropped counts events refused because the buffer was full.
	Dropped uint64
	// Failed counts events given up after every retry.
	Failed uint64
}

// window is how many events may await the stream's acknowledgement at
// once: a burst of joins or expiries (a fleet starting, a partition) is
// stored at the rate the stream takes it, not one round trip per event.
const window = 256

// Publisher publishes registry events to the event stream in the order they
// were handed over, pipelined (an event retried after a failure may land
// after later ones). Its methods may be called concurrently; it keeps the
// lifecycle contract (package lifecycle).
type Publisher struct {
	js  jetstream.JetStream // its own context: asynchronous publishes, their timeout
	cfg Config
	log *slog.Logger
	q   chan registry.Event

	mu       sync.Mutex
	started  bool
	cancel   context.CancelFunc
	done     chan struct{} // closed when run returns
	stopping chan struct{} // closed by Stop: publish what is buffered, then return

	published, duplicates, dropped, failed atomic.Uint64
	dropLog                                *rate.Limiter
}

// NewPublisher returns a Publisher on js, or an error wrapping ErrInvalidConfig.
func NewPublisher(js jetstream.JetStream, cfg Config) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ajs, err := jetstream.New(js.Conn(), jetstream.WithPublishAsyncMaxPending(2*window),
		jetstream.WithPublishAsyncTimeout(cfg.Timeout))
	if err != nil {
		return nil, err
	}
	return &Publisher{
		js: ajs, cfg: cfg, log: log.With("component", "events"),
		q:       make(chan registry.Event, cfg.Buffer),
		dropLog: rate.NewLimiter(rate.Every(5*time.Second), 1),
	}, nil
}

// Start starts publishing. It returns an error wrapping lifecycle.ErrStarted
// if called before.
func (p *Publisher) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return fmt.Errorf("events publisher: %w", lifecycle.ErrStarted)
	}
	p.started = true
	ctx, p.cancel = context.WithCancel(ctx)
	p.done, p.stopping = make(chan struct{}), make(chan struct{})
	go p.run(ctx, p.done, p.stopping)
	return nil
}

// Stop publishes what is still buffered until ctx ends, then stops and waits
// for the publishing goroutine. Events handed over after Stop are not
// published. Safe before Start and twice.
func (p *Publisher) Stop(ctx context.Context) {
	p.mu.Lock()
	cancel, done, stopping := p.cancel, p.done, p.stopping
	p.started = true // a Start after Stop fails
	p.cancel = nil
	p.mu.Unlock()
	if cancel == nil {
		return
	}
	close(stopping)
	select {
	case <-done:
	case <-ctx.Done():
	}
	cancel()
	<-done
}

// OnEvent hands ev over for publishing without blocking: when the buffer is
// full, ev is dropped, counted and logged. It fits queen.Config.OnEvent.
// Events of the queen registry and refreshes are not history: they are
// left out (Publishes reports which are kept).
func (p *Publisher) OnEvent(ev registry.Event) {
	if !Publishes(ev) {
		return
	}
	select {
	case p.q <- ev:
	default:
		n := p.dropped.Add(1)
		if p.dropLog.Allow() {
			p.log.Warn("event history buffer full; events dropped", "dropped", n, "buffer", p.cfg.Buffer)
		}
	}
}

// Stats returns the publisher's counts so far.
func (p *Publisher) Stats() Stats {
	return Stats{
		Published:  p.published.Load(),
		Duplicates: p.duplicates.Load(),
		Dropped:    p.dropped.Load(),
		Failed:     p.failed.Load(),
	}
}

// sent is an event awaiting its acknowledgement.
type sent struct {
	msg *nats.Msg
	f   jetstream.PubAckFuture
}

func (p *Publisher) run(ctx context.Context, done, stopping chan struct{}) {
	defer close(done)
	var win []sent
	defer func() { p.abandon(win) }()
	for {
		var ok <-chan *jetstream.PubAck
		var fail <-chan error
		if len(win) > 0 {
			ok, fail = win[0].f.Ok(), win[0].f.Err()
		}
		select {
		case <-ctx.Done():
			return
		case <-stopping:
			for {
				select {
				case ev := <-p.q:
					win = p.send(ctx, win, ev)
					continue
				default:
				}
				break
			}
			for len(win) > 0 && ctx.Err() == nil {
				win = p.settle(ctx, win)
			}
			return
		case ev := <-p.q: // send settles the oldest first while the window is full
			win = p.send(ctx, win, ev)
		case ack := <-ok:
			p.stored(win[0].msg, ack)
			win = win[1:]
		case err := <-fail:
			p.retry(ctx, win[0].msg, err)
			win = win[1:]
		}
	}
}

// send publishes ev asynchronously, settling the oldest event first while
// the window is full.
func (p *Publisher) send(ctx context.Context, win []sent, ev registry.Event) []sent {
	msg, err := Message(p.cfg.Scheme, p.cfg.QueenID, ev)
	if err != nil {
		p.failed.Add(1)
		p.log.Error("encode event", "key", ev.Key, "event", ev.Type, "err", err)
		return win
	}
	for len(win) >= window && ctx.Err() == nil {
		win = p.settle(ctx, win)
	}
	f, err := p.js.PublishMsgAsync(msg)
	if err != nil {
		p.retry(ctx, msg, err)
		return win
	}
	return append(win, sent{msg, f})
}

// settle waits for the oldest event's acknowledgement (or failure, then
// retried) and returns the window without it.
func (p *Publisher) settle(ctx context.Context, win []sent) []sent {
	select {
	case ack := <-win[0].f.Ok():
		p.stored(win[0].msg, ack)
	case err := <-win[0].f.Err():
		p.retry(ctx, win[0].msg, err)
	case <-ctx.Done():
		return win
	}
	return win[1:]
}

// abandon counts the events still buffered or awaiting acknowledgement when
// the publisher stops without time to settle them.
func (p *Publisher) abandon(win []sent) {
	n := len(win) + len(p.q)
	if n == 0 {
		return
	}
	p.failed.Add(uint64(n))
	p.log.Warn("stopping before every event was stored", "not_stored", n)
}

func (p *Publisher) stored(msg *nats.Msg, ack *jetstream.PubAck) {
	if ack.Duplicate {
		p.duplicates.Add(1)
	} else {
		p.published.Add(1)
	}
	p.log.Debug("event stored", "subject", msg.Subject, "seq", ack.Sequence, "duplicate", ack.Duplicate)
}

// retry publishes msg again, synchronously, up to Config.Retries times after
// its first attempt failed with err.
func (p *Publisher) retry(ctx context.Context, msg *nats.Msg, err error) {
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil || attempt > p.cfg.Retries {
			p.failed.Add(1)
			p.log.Error("event not stored", "subject", msg.Subject, "attempts", attempt, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			continue
		case <-time.After(p.cfg.RetryWait):
		}
		pctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
		var ack *jetstream.PubAck
		ack, err = p.js.PublishMsg(pctx, msg)
		cancel()
		if err == nil {
			p.stored(msg, ack)
			return
		}
	}
}

// Publishes reports whether ev belongs in the event history: a worker or
// hive event other than a refresh (the next beat, no change).
func Publishes(ev registry.Event) bool {
	return (ev.Kind == subjects.KindWorker || ev.Kind == subjects.KindHive) && ev.Type != registry.Refreshed
}

// MsgID returns the Nats-Msg-Id of ev: its kind, key, KV revision and event
// type. Every queen that sees the same KV change derives the same ID.
func MsgID(ev registry.Event) string {
	return string(ev.Kind) + ":" + ev.Key + ":" + strconv.FormatUint(ev.Revision, 10) + ":" + string(ev.Type)
}

// FromRegistry returns the wire form of ev as seen by queen queenID.
func FromRegistry(ev registry.Event, queenID string) wire.Event {
	out := wire.Event{
		V:        wire.SchemaVersion,
		Event:    string(ev.Type),
		Kind:     string(ev.Kind),
		Key:      ev.Key,
		HiveID:   ev.HiveID,
		WorkerID: ev.WorkerID,
		AtMs:     ev.At.UnixMilli(),
		Revision: ev.Revision,
		QueenID:  queenID,
		Previous: ev.Previous,
	}
	switch {
	case ev.Worker != nil:
		w := ev.Worker
		out.InstanceID, out.Status, out.ModelID = w.InstanceID, string(w.Status), w.ModelID
		out.Health, out.HealthReason, out.Liveness = string(w.Health), w.HealthReason, string(w.Liveness)
	case ev.Hive != nil:
		h := ev.Hive
		out.InstanceID = h.InstanceID
		out.Health, out.HealthReason, out.Liveness = string(h.Health), h.HealthReason, string(h.Liveness)
	}
	return out
}

// Message returns the NATS message publishing ev under scheme s: the event
// subject, the msgpack payload, and the Content-Type, Rbee-Schema and
// Nats-Msg-Id headers. It fails only if ev's IDs are not valid subject tokens.
func Message(s subjects.Scheme, queenID string, ev registry.Event) (*nats.Msg, error) {
	we := FromRegistry(ev, queenID)
	return wireMessage(s, &we, MsgID(ev))
}

func validEventType(t string) bool { return subjects.ValidID(t) }
