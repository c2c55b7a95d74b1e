package queen

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
)

// write is one KV operation in flight.
type write struct {
	kind     subjects.Kind
	bucket   string
	key      string
	instance string
	seq      uint64
	data     []byte
	del      bool
	start    time.Time
	attempts int
}

// writer publishes KV writes asynchronously and tracks them until acked.
type writer struct {
	q       *Queen
	mu      sync.Mutex
	pending map[*nats.Msg]*write
	retry   chan *write
}

func newWriter(q *Queen) *writer {
	return &writer{q: q, pending: map[*nats.Msg]*write{}, retry: make(chan *write, 1024)}
}

// kvOperation is the header the KV layer reads to tell a delete from a put.
const kvOperation = "KV-Operation"

func (w *writer) write(wr *write) {
	msg := &nats.Msg{Subject: "$KV." + wr.bucket + "." + wr.key, Data: wr.data}
	if wr.del {
		msg.Header = nats.Header{kvOperation: []string{"DEL"}}
	}
	wr.attempts++
	wr.start = time.Now()
	w.mu.Lock()
	w.pending[msg] = wr
	w.mu.Unlock()
	w.q.metrics.inFlight.Inc()
	if _, err := w.q.js.PublishMsgAsync(msg); err != nil {
		w.failed(w.q.js, msg, err)
	}
}

func (w *writer) take(msg *nats.Msg) *write {
	w.mu.Lock()
	defer w.mu.Unlock()
	wr := w.pending[msg]
	delete(w.pending, msg)
	if wr != nil {
		w.q.metrics.inFlight.Dec()
	}
	return wr
}

// acked runs on the JetStream ack goroutine: it must not block.
func (w *writer) acked(_ jetstream.JetStream, msg *nats.Msg, _ *jetstream.PubAck) {
	if wr := w.take(msg); wr != nil {
		w.q.metrics.writeDone(time.Since(wr.start))
	}
}

// failed runs on the JetStream ack goroutine (or the caller's, for a publish
// refused at once): it hands retries to retryLoop and never blocks.
func (w *writer) failed(_ jetstream.JetStream, msg *nats.Msg, err error) {
	wr := w.take(msg)
	if wr == nil {
		return
	}
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
