package publisher

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/lifecycle"
	"github.com/rbee/heartbeat/natsconn"
	"github.com/rbee/heartbeat/wire"
)

// Stamper is a heartbeat payload the publisher can stamp before sending;
// *wire.Worker and *wire.Hive implement it through wire.Meta.
type Stamper interface {
	Stamp(instanceID string, seq uint64, sentAtMs, intervalMs int64)
}

// connStamper is a payload that names the connection it is sent on;
// *wire.Worker, *wire.Hive and *wire.Queen implement it through wire.Meta.
type connStamper interface {
	StampConn(conn string)
}

// Config configures a Publisher.
type Config struct {
	// Subject is where beats are published. Required.
	Subject string
	// Schema is the Rbee-Schema header value, e.g. wire.SchemaWorker. Required.
	Schema string
	// Interval is the mean time between beats.
	Interval time.Duration
	// Jitter spreads each interval uniformly by ± this fraction, so that many
	// senders started together do not beat together.
	Jitter float64
	// MinGap is the least time between two beats: triggers that come sooner
	// are merged into one beat sent when the gap has passed, so a sender
	// whose status flips per request cannot flood the bus. It is capped at
	// half the interval.
	MinGap time.Duration
	// InstanceID identifies this process start; empty picks a random one.
	InstanceID string
	// Logger receives send failures (rate-limited); nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns a Config for subject and schema with the contract's
// defaults: 30 s interval, ±10 % jitter.
func DefaultConfig(subject, schema string) Config {
	return Config{
		Subject:  subject,
		Schema:   schema,
		Interval: 30 * time.Second,
		Jitter:   0.10,
		MinGap:   100 * time.Millisecond,
	}
}

// Validate returns an error wrapping ErrInvalidConfig if c cannot work.
func (c Config) Validate() error {
	switch {
	case c.Subject == "":
		return fmt.Errorf("%w: subject is required", ErrInvalidConfig)
	case c.Schema == "":
		return fmt.Errorf("%w: schema is required", ErrInvalidConfig)
	case c.Interval < time.Duration(wire.MinIntervalMs)*time.Millisecond || c.Interval > time.Duration(wire.MaxIntervalMs)*time.Millisecond:
		return fmt.Errorf("%w: interval %s outside [%dms, %dms]", ErrInvalidConfig, c.Interval, wire.MinIntervalMs, wire.MaxIntervalMs)
	case c.Jitter < 0 || c.Jitter >= 1:
		return fmt.Errorf("%w: jitter %v outside [0, 1)", ErrInvalidConfig, c.Jitter)
	case c.MinGap < 0:
		return fmt.Errorf("%w: negative min gap %s", ErrInvalidConfig, c.MinGap)
	case len(c.InstanceID) > wire.MaxInstanceIDLen:
		return fmt.Errorf("%w: instance id longer than %d", ErrInvalidConfig, wire.MaxInstanceIDLen)
	}
	return nil
}

// NewInstanceID returns a random 128-bit instance ID in hex.
func NewInstanceID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Stats counts a publisher's beats.
type Stats struct {
	Sent   uint64 // beats handed to the connection
	Failed uint64 // beats that could not be sent (disconnected, encode error)
}

// Publisher sends one sender's heartbeats. Its methods may be called
// concurrently; the snapshot function is called from the publisher's own
// goroutine (and from Stop), one call at a time.
type Publisher[T Stamper] struct {
	nc       *nats.Conn
	cfg      Config
	snapshot func() T
	log      *slog.Logger

	trigger chan struct{}
	mu      sync.Mutex // serialises build+send, so seq order is send order
	seq     uint64
	sent    atomic.Uint64
	failed  atomic.Uint64
	failing bool // guarded by mu; the last send failed (log once per outage)

	life    sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// New returns a Publisher that sends snapshot() on nc. It returns an error
// wrapping ErrInvalidConfig for a bad Config or a nil connection/snapshot.
func New[T Stamper](nc *nats.Conn, cfg Config, snapshot func() T) (*Publisher[T], error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil || snapshot == nil {
		return nil, fmt.Errorf("%w: connection and snapshot are required", ErrInvalidConfig)
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID = NewInstanceID()
	}
	cfg.MinGap = min(cfg.MinGap, cfg.Interval/2)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher[T]{
		nc:       nc,
		cfg:      cfg,
		snapshot: snapshot,
		log:      log.With("component", "publisher", "subject", cfg.Subject),
		trigger:  make(chan struct{}, 1),
	}, nil
}

// InstanceID returns the instance ID stamped on every beat.
func (p *Publisher[T]) InstanceID() string { return p.cfg.InstanceID }

// Stats returns the beats sent and failed so far.
func (p *Publisher[T]) Stats() Stats {
	return Stats{Sent: p.sent.Load(), Failed: p.failed.Load()}
}

// Start sends the first beat at once and then one every interval (± jitter)
// until ctx ends or Stop is called. A second Start returns an error wrapping
// lifecycle.ErrStarted; after Stop, ErrStopped (which wraps it too).
func (p *Publisher[T]) Start(ctx context.Context) error {
	p.life.Lock()
	defer p.life.Unlock()
	if p.stopped {
		return ErrStopped
	}
	if p.started {
		return fmt.Errorf("publisher %s: %w", p.cfg.Subject, lifecycle.ErrStarted)
	}
	p.started = true
	ctx, p.cancel = context.WithCancel(ctx)
	p.wg.Add(1)
	go p.loop(ctx)
	return nil
}

// Trigger asks for a beat now (a status change) instead of at the next tick.
// It never blocks; triggers that arrive while one is pending are merged.
func (p *Publisher[T]) Trigger() {
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

// Stop ends the beat loop, sends a goodbye beat built from a final snapshot
// and flushes it to the server within ctx. It is safe to call twice; the
// second call returns nil and sends nothing. It returns ErrNotStarted if Start
// was never called, or the send/flush error of the goodbye.
func (p *Publisher[T]) Stop(ctx context.Context) error {
	p.life.Lock()
	if p.stopped {
		p.life.Unlock()
		return nil
	}
	p.stopped = true
	started := p.started
	p.life.Unlock()
	if !started {
		return ErrNotStarted
	}
	p.cancel()
	p.wg.Wait()
	if err := p.beat(true); err != nil {
		return err
	}
	if err := natsconn.Flush(ctx, p.nc); err != nil {
		return fmt.Errorf("flush goodbye: %w", err)
	}
	return nil
}

// Abandon ends the beat loop without a goodbye, as a crash would; the
// registry entry then expires by TTL. For tests and demos.
func (p *Publisher[T]) Abandon() {
	p.life.Lock()
	defer p.life.Unlock()
	if p.stopped {
		return
	}
	p.stopped = true
	if p.started {
		p.cancel()
		p.wg.Wait()
	}
}

// NextDelay returns the wait before the next beat: interval scaled by
// 1 + jitter·(2u−1) for u in [0, 1).
func NextDelay(interval time.Duration, jitter, u float64) time.Duration {
	return time.Duration(float64(interval) * (1 + jitter*(2*u-1)))
}

func (p *Publisher[T]) loop(ctx context.Context) {
	defer p.wg.Done()
	// Learn of reconnects so a fresh beat goes out at once instead of at the next tick.
	status := p.nc.StatusChanged(nats.CONNECTED)
	defer p.nc.RemoveStatusListener(status)

	_ = p.beat(false)
	last := time.Now()
	t := time.NewTimer(NextDelay(p.cfg.Interval, p.cfg.Jitter, rand.Float64()))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.trigger:
			if wait := TriggerWait(last, time.Now(), p.cfg.MinGap); wait > 0 {
				t.Reset(wait) // merged: the beat goes out when the gap has passed
				continue
			}
		case <-status:
		}
		_ = p.beat(false)
		last = time.Now()
		t.Reset(NextDelay(p.cfg.Interval, p.cfg.Jitter, rand.Float64()))
	}
}

// TriggerWait returns how long a triggered beat must wait so that beats stay
// at least minGap apart, given the last beat's time; 0 means send now.
func TriggerWait(last, now time.Time, minGap time.Duration) time.Duration {
	return max(0, minGap-now.Sub(last))
}

// beat builds, stamps and sends one beat. It never blocks on the network:
// core NATS publish only writes to the connection's buffer.
func (p *Publisher[T]) beat(goodbye bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.snapshot()
	p.seq++
	v.Stamp(p.cfg.InstanceID, p.seq, time.Now().UnixMilli(), p.cfg.Interval.Milliseconds())
	if c, ok := any(v).(connStamper); ok {
		c.StampConn(natsconn.ID(p.nc)) // re-read per beat: it changes with every reconnect
	}
	data, err := wire.Marshal(v)
	if err == nil {
		msg := &nats.Msg{Subject: p.cfg.Subject, Data: data, Header: nats.Header{
			wire.HeaderContentType: []string{wire.ContentTypeMsgpack},
			wire.HeaderSchema:      []string{p.cfg.Schema},
		}}
		if goodbye {
			msg.Header[wire.HeaderEvent] = []string{wire.EventGoodbye}
		}
		err = p.nc.PublishMsg(msg)
	}
	if err != nil {
		p.failed.Add(1)
		if !p.failing {
			p.log.Warn("heartbeat not sent, retrying at next tick", "seq", p.seq, "err", err)
		}
		p.failing = true
		return err
	}
	if p.failing {
		p.log.Info("heartbeat sending again", "seq", p.seq)
	}
	p.failing = false
	p.sent.Add(1)
	return nil
}
