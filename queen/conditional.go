package queen

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// Every registry write expects the newest revision of its key the writing
// queen knows (the Nats-Expected-Last-Subject-Sequence header, as KV Update
// and Delete do). A write that finds the key changed (another queen wrote
// it, a mark raced a beat, a timed-out write did land) is refused by the
// server; the queen then reads the key's last message and decides the write
// again from what it shows (judge), so across any number of queens an older
// beat is never written over a newer one and a key that left never comes
// back from its sender's older beat.

// Headers of a goodbye's DEL marker: the instance that said goodbye and the
// seq of its goodbye. A queen's re-read refuses that instance's older beats.
const (
	HeaderInstance = "Rbee-Instance"
	HeaderSeq      = "Rbee-Seq"
)

// Re-reads run on this many goroutines; each is one direct get.
const rereaders = 16

// rereadLocked takes s out of the queues until its stored value has been
// read again and its waiting write decided anew. mu held.
func (w *writer) rereadLocked(s *slot) {
	if s.rereading {
		return
	}
	s.rereading = true
	w.schedule(s)
	w.rereads[s] = struct{}{}
	w.queueReread(s)
}

// watched ends s's re-read if the registry watch has told of a newer
// message of the key than the refused write expected (observe, forget): the
// waiting write is judged against it, as after a read, without a request to
// the store. Under overload, when entries expire faster than they are
// written, every expiry's marker refuses a write; the watch delivers each
// marker anyway, and reading each key again as well would queue the keys
// behind thousands of reads while their entries expire. mu held.
func (w *writer) watched(s *slot) {
	if !s.rereading || s.stored.what == sUnknown || s.stored.rev <= s.rereadOver {
		return
	}
	delete(w.rereads, s)
	s.rereading = false
	w.finish(s)
}

// queueReread queues s for a reader: goodbyes and marks first. mu held.
func (w *writer) queueReread(s *slot) {
	i := 1
	if s.pend != nil && (s.pend.del || s.pend.mark) {
		i = 0
	}
	w.rereadQ[i] = append(w.rereadQ[i], s)
	select {
	case w.rereadWake <- struct{}{}:
	default:
	}
}

// nextReread takes the next key to read again, nil if none. mu held.
func (w *writer) nextReread() *slot {
	for i := range w.rereadQ {
		if q := w.rereadQ[i]; len(q) > 0 {
			s := q[0]
			q[0] = nil
			w.rereadQ[i] = q[1:]
			return s
		}
	}
	return nil
}

// runRereads reads keys again until stop; rereaders goroutines.
func (w *writer) runRereads(ctx context.Context) {
	var wg sync.WaitGroup
	for range rereaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				w.mu.Lock()
				s := w.nextReread()
				for s == nil && ctx.Err() == nil {
					w.mu.Unlock()
					select {
					case <-ctx.Done():
					case <-w.rereadWake:
					}
					w.mu.Lock()
					s = w.nextReread()
				}
				if s == nil {
					w.mu.Unlock()
					return
				}
				if !s.rereading { // the watch told of the change meanwhile (watched)
					w.mu.Unlock()
					continue
				}
				if len(w.rereadQ[0])+len(w.rereadQ[1]) > 0 {
					select { // pass the wake on
					case w.rereadWake <- struct{}{}:
					default:
					}
				}
				w.mu.Unlock()
				w.reread(ctx, s)
			}
		}()
	}
	wg.Wait()
}

// reread reads s's last message and decides its waiting write; a store that
// does not answer is asked again after failPause.
func (w *writer) reread(ctx context.Context, s *slot) {
	raw, err := w.readLast(ctx, s)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.errLog.Do(func() { w.log.Warn("registry key cannot be read again", "key", s.key, "err", err) })
		if o := s.pend; o != nil && !o.del && stale(o, time.Now().UnixMilli()) {
			// Its TTL ran out while the store did not answer: writing it
			// would make a dead sender look alive (counted and logged, as
			// in failed).
			s.pend = nil
			delete(w.rereads, s)
			s.rereading = false
			w.m.writeFailed(o.kind, "lost")
			w.log.Error("registry write given up: its TTL ran out while the key could not be read", "key", o.key, "seq", o.seq, "err", err)
			w.finish(s)
			return
		}
		time.AfterFunc(failPause, func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.queueReread(s)
		})
		return
	}
	delete(w.rereads, s)
	s.rereading = false
	// What is read is the newest there is; a watch event of a newer write
	// may still come, and makes the next write re-read again.
	s.stored = storedFrom(s.kind, raw)
	if raw != nil {
		if ttl := parseTTL(raw.Header.Get(jetstream.MsgTTLHeader)); ttl > 0 && !raw.Time.IsZero() {
			s.deadlineMs = raw.Time.Add(ttl).UnixMilli()
		}
	}
	w.finish(s) // the waiting write is judged when it is built
}

// stale reports whether o can no longer be written at nowMs: a beat whose
// TTL ran out since it was accepted, or a mark past the expiry it keeps.
func stale(o *op, nowMs int64) bool {
	if o.mark {
		return o.expiresMs <= nowMs
	}
	return o.ttlMs-(nowMs-o.acceptedMs) <= 0
}

// readLast returns the last message of s's subject in its bucket's stream,
// nil if it has none.
func (w *writer) readLast(ctx context.Context, s *slot) (*jetstream.RawStreamMsg, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := w.stream(ctx, s.kind)
	if err != nil {
		return nil, err
	}
	raw, err := st.GetLastMsgForSubject(ctx, s.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	return raw, err
}

// stream returns the bucket stream of kind, looked up once.
func (w *writer) stream(ctx context.Context, kind subjects.Kind) (jetstream.Stream, error) {
	w.streamMu.Lock()
	defer w.streamMu.Unlock()
	if st := w.streams[kind]; st != nil {
		return st, nil
	}
	name := bucketStreamPrefix + strings.TrimSuffix(strings.TrimPrefix(w.buckets[kind], "$KV."), ".")
	st, err := w.js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	if w.streams == nil {
		w.streams = map[subjects.Kind]jetstream.Stream{}
	}
	w.streams[kind] = st
	return st, nil
}

// stored is what a queen knows of the last message of a key's subject.
type stored struct {
	rev  uint64 // its revision (stream sequence); 0 with sNone: the subject has none
	what storedKind
	// instance: the value's instance, or the one whose goodbye the DEL is
	// ("" if unknown); seq and atMs: the value's seq and accept time.
	instance string
	seq      uint64
	atMs     int64
}

type storedKind uint8

// What a stored message is. The zero value: nothing known, so a write
// expects no message and a refusal brings a re-read.
const (
	sUnknown storedKind = iota
	sNone               // the subject has no message
	sValue              // an entry
	sLeft               // a goodbye's DEL
	sGone               // an expiry's or purge's marker
)

// learn takes n if it is newer than what s knows.
func (s *stored) learn(n stored) {
	if n.what != sUnknown && (n.rev > s.rev || s.what == sUnknown) {
		*s = n
	}
}

// is reports whether s is o's own beat.
func (s *stored) is(o *op) bool {
	return s.what == sValue && s.instance == o.instance && s.seq == o.seq
}

// storedOf returns what o leaves stored once written at rev.
func storedOf(o *op, rev uint64) stored {
	if o.del {
		return stored{rev: rev, what: sLeft, instance: o.instance, seq: o.seq}
	}
	return stored{rev: rev, what: sValue, instance: o.instance, seq: o.seq, atMs: o.acceptedMs}
}

// admits decides whether o may be written over what s knows is stored,
// and why not.
//   - Nothing known: a beat, expecting no message (a refusal re-reads); the
//     writer reads the key before a goodbye or mark.
//   - Nothing stored: a beat is written; a goodbye or mark has nothing to act on.
//   - A goodbye's DEL: the instance that said goodbye is never written
//     again; another instance (a restart) is.
//   - An expiry's or purge's marker: a beat re-creates the entry (its sender
//     is alive); a goodbye records that it left; a mark has nothing to mark.
//   - A value: a beat of the same instance is written only if its seq is
//     newer; of another instance only if this queen accepted it after the
//     stored one was accepted. A goodbye deletes only its own instance's
//     entry; a mark applies only to the beat it was made for.
func (s *stored) admits(o *op) (bool, string) {
	switch s.what {
	case sUnknown:
		return true, ""
	case sNone:
		return !o.del && !o.mark, "no entry"
	case sLeft:
		switch {
		case o.del || o.mark:
			return false, "left already"
		case s.instance != "" && s.instance == o.instance:
			return false, "the instance said goodbye"
		}
		return true, ""
	case sGone:
		return !o.mark, "expired"
	}
	switch {
	case s.instance == "": // undecodable: overwritten by a beat
		return !o.del && !o.mark, "undecodable stored value"
	case o.del:
		return s.instance == o.instance, "goodbye from an instance that is not the stored one"
	case o.mark:
		return s.is(o), "a newer beat is stored"
	case s.instance == o.instance:
		return o.seq > s.seq, "a newer or the same beat is stored"
	}
	return o.acceptedMs > s.atMs, "another instance's newer beat is stored"
}

// storedFrom reads what raw, the last message of a subject (nil: none), is.
func storedFrom(kind subjects.Kind, raw *jetstream.RawStreamMsg) stored {
	if raw == nil {
		return stored{what: sNone}
	}
	st := stored{rev: raw.Sequence}
	switch raw.Header.Get(kvOperation) {
	case "DEL":
		st.what, st.instance = sLeft, raw.Header.Get(HeaderInstance)
		st.seq, _ = strconv.ParseUint(raw.Header.Get(HeaderSeq), 10, 64)
		return st
	case "PURGE":
		st.what = sGone
		return st
	}
	switch raw.Header.Get(jetstream.MarkerReasonHeader) {
	case "":
	case "Remove":
		st.what = sLeft
		return st
	default:
		st.what = sGone
		return st
	}
	st.what = sValue
	st.instance, st.seq, st.atMs, _ = storedIdent(kind, raw.Data)
	return st
}

// parseTTL reads a Nats-TTL header ("3s", or whole seconds); 0 if absent
// or unreadable.
func parseTTL(v string) time.Duration {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Duration(n) * time.Second
	}
	d, _ := time.ParseDuration(v)
	return d
}

// storedIdent reads a registry value's instance, seq and accept time.
func storedIdent(kind subjects.Kind, data []byte) (instance string, seq uint64, receivedAtMs int64, err error) {
	switch kind {
	case subjects.KindWorker:
		e, err := wire.DecodeWorkerEntry(data)
		if err != nil {
			return "", 0, 0, err
		}
		return e.InstanceID, e.Seq, e.ReceivedAtMs, nil
	case subjects.KindHive:
		e, err := wire.DecodeHiveEntry(data)
		if err != nil {
			return "", 0, 0, err
		}
		return e.InstanceID, e.Seq, e.ReceivedAtMs, nil
	}
	e, err := wire.DecodeQueenEntry(data)
	if err != nil {
		return "", 0, 0, err
	}
	return e.InstanceID, e.Seq, e.ReceivedAtMs, nil
}
