package wire

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/tinylib/msgp/msgp"
	"github.com/vmihailenco/msgpack/v5"
)

// MaxPayload is the largest heartbeat payload accepted, in bytes. A hive with
// 1,024 workers of ordinary size and 64 GPUs stays well below it; a larger
// view is trimmed to fit (TrimWorkers).
const MaxPayload = 256 << 10

// MaxDepth is the deepest nesting of maps and arrays that DecodeAny accepts,
// and that a refused payload may have without being called undecodable.
// Heartbeats nest three levels deep (hive → gpus → gpu).
const MaxDepth = 32

// errTooDeep is returned by walk for a value nested deeper than MaxDepth.
var errTooDeep = errors.New("nested deeper than MaxDepth")

// walk checks that b starts with one complete msgpack value nested at most
// MaxDepth-depth deep, and returns the bytes after it. It allocates nothing.
// It reads the whole input a second time, so decode runs it only for a
// payload it refuses: a structural fault (truncation, a length declared beyond
// the input, a reserved byte, deep nesting) then names the refusal, whichever
// key it hides under, rather than the first value-level error met before it.
func walk(b []byte, depth int) ([]byte, error) {
	var n uint32
	var err error
	switch msgp.NextType(b) {
	case msgp.MapType:
		if n, b, err = msgp.ReadMapHeaderBytes(b); err != nil {
			return b, err
		}
		n *= 2
	case msgp.ArrayType:
		if n, b, err = msgp.ReadArrayHeaderBytes(b); err != nil {
			return b, err
		}
	default:
		return msgp.Skip(b)
	}
	if n > 0 && depth == MaxDepth {
		return b, errTooDeep
	}
	for range n {
		if b, err = walk(b, depth+1); err != nil {
			return b, err
		}
	}
	return b, nil
}

// Marshaler is what Marshal encodes: the payload and entry types of this
// package (Worker, Hive, Queen, their entries, Event, GPU, HiveWorker), whose
// codec is generated.
type Marshaler interface {
	msgp.Marshaler
	msgp.Sizer
}

// Marshal returns the msgpack encoding of v, a pointer to one of this
// package's payload or entry types. It returns an error for any other type.
func Marshal(v any) ([]byte, error) {
	m, ok := v.(Marshaler)
	if !ok {
		return nil, fmt.Errorf("wire: %T has no generated msgpack codec", v)
	}
	// Msgsize is an upper bound, often half again the encoded size: encode
	// into a pooled buffer and return an exact copy, one allocation of the
	// right size.
	bp := bufPool.Get().(*[]byte)
	b, err := m.MarshalMsg((*bp)[:0])
	var out []byte
	if err == nil {
		out = bytes.Clone(b)
	}
	if cap(b) <= maxPooled {
		*bp = b
		bufPool.Put(bp)
	}
	return out, err
}

// maxPooled is the largest buffer Marshal keeps for reuse.
const maxPooled = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// AppendWorkerEntry appends to dst the registry value of an accepted worker
// beat, the bytes Marshal(&WorkerEntry{Worker: *w, Received: rec}) returns,
// and returns the extended buffer.
func AppendWorkerEntry(dst []byte, w *Worker, rec Received) []byte {
	e := WorkerEntry{Worker: *w, Received: rec}
	b, _ := e.MarshalMsg(dst) // the generated encoder of plain fields cannot fail
	return b
}

// unmarshaler is a pointer to a type with a generated decoder.
type unmarshaler[T any] interface {
	*T
	msgp.Unmarshaler
}

// decode decodes data, one msgpack map and nothing after it, into a new T.
// Failures wrap ErrOversize, ErrUndecodable, ErrBadType or ErrInvalid (a
// value outside its type's range, or an array longer than its limit).
func decode[T any, P unmarshaler[T]](data []byte) (*T, error) {
	v := new(T)
	if err := decodeInto[T, P](data, v); err != nil {
		return nil, err
	}
	return v, nil
}

// decodeInto is decode into v, which it zeroes first.
func decodeInto[T any, P unmarshaler[T]](data []byte, v *T) error {
	if len(data) > MaxPayload {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrOversize, len(data), MaxPayload)
	}
	if msgp.NextType(data) != msgp.MapType {
		return fmt.Errorf("%w: not a msgpack map", ErrUndecodable)
	}
	var zero T
	*v = zero
	rest, err := P(v).UnmarshalMsg(data)
	if isNilValue(err) {
		// nil reads as absent (docs/wire.md); msgp's readers of strings,
		// integers and bools refuse it, so read the map again without them.
		if clean, cerr := withoutNils(data); cerr == nil {
			*v = zero
			rest, err = P(v).UnmarshalMsg(clean)
		}
	}
	if err != nil {
		return refused(data, classify(err))
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d trailing bytes after the map", ErrUndecodable, len(rest))
	}
	return nil
}

// refused returns the error for a payload that decode or validation refused
// with err: ErrUndecodable if data is structurally malformed (see walk),
// err otherwise.
func refused(data []byte, err error) error {
	if errors.Is(err, ErrUndecodable) {
		return err
	}
	if rest, werr := walk(data, 0); werr != nil {
		return fmt.Errorf("%w: %v", ErrUndecodable, werr)
	} else if len(rest) != 0 {
		return fmt.Errorf("%w: %d trailing bytes after the map", ErrUndecodable, len(rest))
	}
	return err
}

// validated validates a decoded payload; a refusal is classified by refused.
func validated(data []byte, validate func() error) error {
	if err := validate(); err != nil {
		return refused(data, err)
	}
	return nil
}

// isNilValue reports whether err is msgp's refusal of a nil value.
func isNilValue(err error) bool {
	var te msgp.TypeError
	return errors.As(err, &te) && te.Encoded == msgp.NilType
}

// classify wraps a msgp decoding error in the package's sentinel errors.
func classify(err error) error {
	var (
		te  msgp.TypeError
		ubz msgp.UintBelowZero
		uo  msgp.UintOverflow
		iof msgp.IntOverflow
	)
	switch {
	case errors.Is(err, msgp.ErrLimitExceeded):
		return fmt.Errorf("%w: an array is longer than its limit: %v", ErrInvalid, err)
	case errors.As(err, &ubz), errors.As(err, &uo), errors.As(err, &iof):
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	case errors.As(err, &te):
		return fmt.Errorf("%w: %v", ErrBadType, err)
	}
	return fmt.Errorf("%w: %v", ErrUndecodable, err)
}

// nilDepth is how deep withoutNils looks for nil values: the payload map,
// its arrays and their records (gpus, workers).
const nilDepth = 3

// withoutNils returns a copy of data whose first value, a map, has every
// entry with a nil value left out, in it and in the records of its arrays,
// followed by the bytes after that value. It fails on malformed data.
func withoutNils(data []byte) ([]byte, error) {
	out, rest, err := appendWithoutNils(make([]byte, 0, len(data)), data, 0)
	if err != nil {
		return nil, err
	}
	return append(out, rest...), nil
}

func appendWithoutNils(dst, b []byte, depth int) (out, rest []byte, err error) {
	if depth < nilDepth {
		switch msgp.NextType(b) {
		case msgp.MapType:
			n, rest, err := msgp.ReadMapHeaderBytes(b)
			if err != nil {
				return dst, b, err
			}
			keep, p := uint32(0), rest
			for range n {
				if p, err = msgp.Skip(p); err != nil {
					return dst, b, err
				}
				if !msgp.IsNil(p) {
					keep++
				}
				if p, err = msgp.Skip(p); err != nil {
					return dst, b, err
				}
			}
			dst = msgp.AppendMapHeader(dst, keep)
			for range n {
				val, _ := msgp.Skip(rest) // checked above
				if msgp.IsNil(val) {
					rest, _ = msgp.Skip(val)
					continue
				}
				dst = append(dst, rest[:len(rest)-len(val)]...)
				if dst, rest, err = appendWithoutNils(dst, val, depth+1); err != nil {
					return dst, b, err
				}
			}
			return dst, rest, nil
		case msgp.ArrayType:
			n, rest, err := msgp.ReadArrayHeaderBytes(b)
			if err != nil {
				return dst, b, err
			}
			dst = msgp.AppendArrayHeader(dst, n)
			for range n {
				if dst, rest, err = appendWithoutNils(dst, rest, depth+1); err != nil {
					return dst, b, err
				}
			}
			return dst, rest, nil
		}
	}
	if rest, err = msgp.Skip(b); err != nil {
		return dst, b, err
	}
	return append(dst, b[:len(b)-len(rest)]...), rest, nil
}

// DecodeWorker decodes and validates a worker payload. It returns an error
// wrapping ErrOversize, ErrUndecodable, ErrBadType, ErrUnknownSchema or
// ErrInvalid.
func DecodeWorker(data []byte) (*Worker, error) {
	e, err := DecodeWorkerBeat(data)
	if err != nil {
		return nil, err
	}
	return &e.Worker, nil
}

// DecodeWorkerBeat is DecodeWorker into the Worker of a new WorkerEntry,
// its Received zero: a receiver that keeps the beat as a registry entry
// allocates it once. The payload's own keys only are read.
func DecodeWorkerBeat(data []byte) (*WorkerEntry, error) {
	e := new(WorkerEntry)
	if err := decodeInto(data, &e.Worker); err != nil {
		return nil, err
	}
	if err := validated(data, e.Worker.Validate); err != nil {
		return nil, err
	}
	return e, nil
}

// DecodeHive decodes and validates a hive payload. It returns an error
// wrapping ErrOversize, ErrUndecodable, ErrBadType, ErrUnknownSchema or
// ErrInvalid.
func DecodeHive(data []byte) (*Hive, error) {
	h, err := decode[Hive](data)
	if err != nil {
		return nil, err
	}
	h.emptyNotNil()
	if err := validated(data, h.Validate); err != nil {
		return nil, err
	}
	return h, nil
}

// DecodeQueen decodes and validates a queen payload. It returns an error
// wrapping ErrOversize, ErrUndecodable, ErrBadType, ErrUnknownSchema or
// ErrInvalid.
func DecodeQueen(data []byte) (*Queen, error) {
	q, err := decode[Queen](data)
	if err != nil {
		return nil, err
	}
	if err := validated(data, q.Validate); err != nil {
		return nil, err
	}
	return q, nil
}

// DecodeIdent reads a beat's instance, seq and interval, skipping its other
// keys; it checks the msgpack structure only, not the beat.
func DecodeIdent(data []byte) (*Ident, error) { return decode[Ident](data) }

// DecodeWorkerEntry decodes a worker registry value. It does not validate it:
// the queen validated the beat before storing it. Errors wrap ErrOversize,
// ErrUndecodable, ErrBadType or ErrInvalid.
func DecodeWorkerEntry(data []byte) (*WorkerEntry, error) { return decode[WorkerEntry](data) }

// DecodeHiveEntry decodes a hive registry value without validating it.
// Errors wrap ErrOversize, ErrUndecodable, ErrBadType or ErrInvalid.
func DecodeHiveEntry(data []byte) (*HiveEntry, error) {
	e, err := decode[HiveEntry](data)
	if err != nil {
		return nil, err
	}
	e.emptyNotNil()
	return e, nil
}

// emptyNotNil makes absent or empty gpus and workers empty slices, not nil,
// so that they print as [] in JSON, as the senders wrote them (the generated
// decoder reads an empty array as nil).
func (h *Hive) emptyNotNil() {
	if h.GPUs == nil {
		h.GPUs = []GPU{}
	}
	if h.Workers == nil {
		h.Workers = []HiveWorker{}
	}
}

// DecodeQueenEntry decodes a queen registry value without validating it.
// Errors wrap ErrOversize, ErrUndecodable, ErrBadType or ErrInvalid.
func DecodeQueenEntry(data []byte) (*QueenEntry, error) { return decode[QueenEntry](data) }

// DecodeEvent decodes a registry event from the event stream. It returns an
// error wrapping ErrOversize, ErrUndecodable, ErrBadType, ErrUnknownSchema
// (a v other than SchemaVersion) or ErrInvalid.
func DecodeEvent(data []byte) (*Event, error) {
	e, err := decode[Event](data)
	if err != nil {
		return nil, err
	}
	if err := validated(data, e.Validate); err != nil {
		return nil, err
	}
	return e, nil
}

// DecodeAny decodes any msgpack value into plain Go values (maps with string
// keys, slices, strings, numbers), for printing as JSON. Map keys that are not
// strings are printed as strings. It refuses oversize input, malformed input
// and trailing bytes with ErrOversize or ErrUndecodable.
func DecodeAny(data []byte) (any, error) {
	if len(data) > 16*MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes", ErrOversize, len(data))
	}
	// Structure first: msgpack/v5 sizes slices and maps from their declared
	// lengths before reading them; after walk no declared length exceeds
	// what the input holds.
	rest, err := walk(data, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUndecodable, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after the value", ErrUndecodable, len(rest))
	}
	d := msgpack.NewDecoder(bytes.NewReader(data))
	d.SetMapDecoder(decodeStringMap)
	v, err := d.DecodeInterfaceLoose()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUndecodable, err)
	}
	return v, nil
}

// decodeStringMap decodes a map of any keys into map[string]any. Decoding
// into map[any]any panics on an unhashable key (a map used as a key), which a
// fuzzer finds at once.
func decodeStringMap(d *msgpack.Decoder) (any, error) {
	n, err := d.DecodeMapLen()
	if err != nil || n < 0 {
		return nil, err
	}
	m := make(map[string]any, min(n, 1024))
	for range n {
		k, err := d.DecodeInterfaceLoose()
		if err != nil {
			return nil, err
		}
		v, err := d.DecodeInterfaceLoose()
		if err != nil {
			return nil, err
		}
		ks, ok := k.(string)
		if !ok {
			ks = fmt.Sprint(k)
		}
		m[ks] = v
	}
	return m, nil
}

// SchemaOf returns the schema header value for a payload kind ("worker",
// "hive" or "queen").
func SchemaOf(kind string) string {
	switch kind {
	case "hive":
		return SchemaHive
	case "queen":
		return SchemaQueen
	}
	return SchemaWorker
}
