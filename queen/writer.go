package queen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/subjects"
)

// write is one KV operation: a put of data, or a delete when data is nil.
type write struct {
	kind     subjects.Kind
	subject  string // $KV.<bucket>.<key>
	key      string
	instance string
	seq      uint64
	data     []byte
	attempts int
	// Guarded by the writer's mu while the write is pending:
	start  time.Time
	noResp int // re-sends after "no responders" within this attempt
}

// kvOperation is the header the KV layer reads to tell a delete from a put.
const kvOperation = "KV-Operation"

// delHeader marks a KV delete; nats.go only reads it, so all deletes share it.
var delHeader = nats.Header{kvOperation: []string{"DEL"}}

// newWrite returns the KV put of data under subject ($KV.<bucket>.<key>), or
// the delete of the key if data is nil.
func newWrite(kind subjects.Kind, subject, key, instance string, seq uint64, data []byte) *write {
	return &write{kind: kind, subject: subject, key: key, instance: instance, seq: seq, data: data}
}

// Re-sends after a "no responders" answer (the stream is not there yet, e.g.
// while JetStream restarts), as JetStream's own async publish does them.
const (
	noRespRetries = 2
	noRespWait    = 250 * time.Millisecond
)

var (
	errNoResponders = errors.New("no responders: the registry stream is not available")
	errBadAck       = errors.New("unrecognised publish acknowledgement")
	errAckTimeout   = errors.New("no publish acknowledgement in time")
	errStopping     = errors.New("queen stopping")
)

// writer publishes KV writes and tracks each until the stream acknowledges
// it: a reply subject per write under one wildcard subscription, at most
// MaxInFlight writes pending, a deadline per write, and every pending write
// failed when the connection is lost (its acknowledgement may be too).
// JetStream's PublishMsgAsync does the same with a random token, two maps, a
// timer and a JSON decode per write, which at the queen's rates cost more CPU
// than validating the beat; here a counter, one map, a periodic deadline sweep
// and a byte scan of the acknowledgement do it.
//
// write and the ack handler may run concurrently; write blocks while
// MaxInFlight writes are pending.
type writer struct {
	q       *Queen
	nc      *nats.Conn
	prefix  string // reply subject = prefix + token
	timeout time.Duration
	slots   chan struct{} // one per pending write
	done    <-chan struct{}
	retry   chan *write
	sub     *nats.Subscription

	mu      sync.Mutex
	pending map[uint64]*write
	next    uint64
	idle    chan struct{} // closed when pending empties; nil while nobody waits
}

func newWriter(q *Queen) *writer {
	return &writer{
		q:       q,
		nc:      q.nc,
		prefix:  q.nc.NewInbox() + ".",
		timeout: q.cfg.RequestTimeout,
		slots:   make(chan struct{}, q.cfg.MaxInFlight),
		retry:   make(chan *write, 1024),
		pending: map[uint64]*write{},
	}
}

// start subscribes to the acknowledgements; writes blocked for a free slot
// give up once done is closed.
func (w *writer) start(done <-chan struct{}) error {
	w.done = done
	sub, err := w.nc.Subscribe(w.prefix+"*", w.acked)
	if err != nil {
		return fmt.Errorf("subscribe %s*: %w", w.prefix, err)
	}
	w.sub = sub
	return nil
}

// stop drops the acknowledgement subscription.
func (w *writer) stop() {
	if w.sub != nil {
		_ = w.sub.Unsubscribe()
	}
}

// write sends wr as a new attempt.
func (w *writer) write(wr *write) {
	wr.attempts++
	select {
	case w.slots <- struct{}{}:
	default:
		select {
		case w.slots <- struct{}{}:
		case <-w.done:
			w.failed(wr, errStopping)
			return
		}
	}
	w.mu.Lock()
	w.next++
	id := w.next
	w.pending[id] = wr
	wr.start, wr.noResp = time.Now(), 0
	w.mu.Unlock()
	if err := w.publish(wr, id); err != nil {
		if w.take(id) != nil {
			w.failed(wr, err)
		}
	}
}

func (w *writer) publish(wr *write, id uint64) error {
	var buf [80]byte
	reply := string(strconv.AppendUint(append(buf[:0], w.prefix...), id, 10))
	if wr.data == nil {
		return w.nc.PublishMsg(&nats.Msg{Subject: wr.subject, Reply: reply, Header: delHeader})
	}
	return w.nc.PublishRequest(wr.subject, reply, wr.data)
}

// take removes the pending write id and frees its slot; nil if it is not
// pending (already acknowledged, timed out or failed).
func (w *writer) take(id uint64) *write {
	w.mu.Lock()
	wr := w.pending[id]
	if wr == nil {
		w.mu.Unlock()
		return nil
	}
	delete(w.pending, id)
	if len(w.pending) == 0 && w.idle != nil {
		close(w.idle)
		w.idle = nil
	}
	w.mu.Unlock()
	<-w.slots
	return wr
}

// acked handles an acknowledgement, on the subscription's goroutine.
func (w *writer) acked(m *nats.Msg) {
	id, err := strconv.ParseUint(m.Subject[len(w.prefix):], 10, 64)
	if err != nil {
		return
	}
	err = ackError(m)
	if errors.Is(err, errNoResponders) && w.resendLater(id) {
		return
	}
	wr := w.take(id)
	if wr == nil {
		return
	}
	if err != nil {
		w.failed(wr, err)
		return
	}
	w.q.metrics.writeDone(time.Since(wr.start))
}

// resendLater schedules pending write id to be sent again after noRespWait,
// at most noRespRetries times per attempt; false when it may not.
func (w *writer) resendLater(id uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	wr := w.pending[id]
	if wr == nil || wr.noResp >= noRespRetries {
		return false
	}
	wr.noResp++
	time.AfterFunc(noRespWait, func() {
		w.mu.Lock()
		still := w.pending[id] == wr
		if still {
			wr.start = time.Now()
		}
		w.mu.Unlock()
		if !still {
			return
		}
		if err := w.publish(wr, id); err != nil && w.take(id) != nil {
			w.failed(wr, err)
		}
	})
	return true
}

// ackError returns nil for a stream's publish acknowledgement, or why it is
// not one.
func ackError(m *nats.Msg) error {
	if len(m.Data) == 0 {
		if m.Header.Get("Status") == "503" {
			return errNoResponders
		}
		return errBadAck
	}
	if bytes.Contains(m.Data, []byte(`"error"`)) {
		var r struct {
			Error *struct {
				Code        int    `json:"code"`
				ErrCode     int    `json:"err_code"`
				Description string `json:"description"`
			} `json:"error"`
		}
		if json.Unmarshal(m.Data, &r) == nil && r.Error != nil {
			return fmt.Errorf("stream refused the write: %s (code %d, err_code %d)", r.Error.Description, r.Error.Code, r.Error.ErrCode)
		}
		return errBadAck
	}
	if !bytes.Contains(m.Data, []byte(`"seq":`)) {
		return errBadAck
	}
	return nil
}

// failed counts a failed attempt and hands the write to retryLoop, unless a
// newer beat of the key superseded it or its retries are spent. It never blocks.
func (w *writer) failed(wr *write, err error) {
	w.q.metrics.writeErrors.Inc()
	switch {
	case !w.q.tracker.latest(wr.key, wr.instance, wr.seq):
		w.q.metrics.writesSuperseded.Inc() // a newer beat of the key is written instead
	case wr.attempts <= w.q.cfg.WriteRetries:
		select {
		case w.retry <- wr:
			return
		default:
		}
		fallthrough
	default:
		w.q.metrics.writesLost.Inc()
		w.q.log.Error("registry write given up", "key", wr.key, "seq", wr.seq, "attempts", wr.attempts, "err", err)
	}
}

// failAll fails every pending write older than cutoff (all of them for the
// zero time) with err.
func (w *writer) failAll(cutoff time.Time, err error) {
	var ids []uint64
	w.mu.Lock()
	for id, wr := range w.pending {
		if cutoff.IsZero() || wr.start.Before(cutoff) {
			ids = append(ids, id)
		}
	}
	w.mu.Unlock()
	for _, id := range ids {
		if wr := w.take(id); wr != nil {
			w.failed(wr, err)
		}
	}
}

// inFlight returns the number of writes awaiting their acknowledgement.
func (w *writer) inFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// wait returns true once no write is pending, false if ctx ends first.
func (w *writer) wait(ctx context.Context) bool {
	w.mu.Lock()
	if len(w.pending) == 0 {
		w.mu.Unlock()
		return true
	}
	if w.idle == nil {
		w.idle = make(chan struct{})
	}
	idle := w.idle
	w.mu.Unlock()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// watch fails the writes whose acknowledgement is overdue and, when the
// connection drops, every pending write: an acknowledgement in flight then
// may never come.
func (w *writer) watch(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	lost := w.nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	defer w.nc.RemoveStatusListener(lost)
	t := time.NewTicker(min(max(w.timeout/4, 10*time.Millisecond), time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-lost:
			if !ok {
				lost = nil
				continue
			}
			w.failAll(time.Time{}, nats.ErrDisconnected)
		case now := <-t.C:
			w.failAll(now.Add(-w.timeout), errAckTimeout)
		}
	}
}

func (w *writer) retryLoop(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case wr := <-w.retry:
			if !w.q.tracker.latest(wr.key, wr.instance, wr.seq) {
				w.q.metrics.writesSuperseded.Inc()
				continue
			}
			w.q.metrics.writeRetries.Inc()
			w.write(wr)
		}
	}
}
