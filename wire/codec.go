package wire

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxPayload is the largest heartbeat payload accepted, in bytes. A hive with
// 1,024 workers and 64 GPUs stays well below it.
const MaxPayload = 256 << 10

var encPool = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = msgpack.NewEncoder(&e.buf)
	e.enc.UseCompactInts(true)
	e.enc.UseCompactFloats(true)
	return e
}}

type encoder struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

// Marshal returns the msgpack encoding of v (a Worker, Hive, WorkerEntry or
// HiveEntry), with integers and floats in their most compact form.
func Marshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case *Worker:
		return appendWorker(make([]byte, 0, workerSize(v, nil)), v, nil), nil
	case *WorkerEntry:
		return appendWorker(make([]byte, 0, workerSize(&v.Worker, &v.Received)), &v.Worker, &v.Received), nil
	case *Hive:
		return marshalHive(v, nil), nil
	case *HiveEntry:
		return marshalHive(&v.Hive, &v.Received), nil
	}
	e := encPool.Get().(*encoder)
	defer encPool.Put(e)
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.Clone(e.buf.Bytes()), nil
}

var decPool = sync.Pool{New: func() any { return msgpack.NewDecoder(nil) }}

// unmarshal decodes data into v and classifies any failure as ErrOversize,
// ErrUndecodable or ErrBadType.
func unmarshal(data []byte, v any) error {
	if len(data) > MaxPayload {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrOversize, len(data), MaxPayload)
	}
	if len(data) == 0 || !isMap(data[0]) {
		return fmt.Errorf("%w: not a msgpack map", ErrUndecodable)
	}
	// Structure first: the reflection decoder trusts declared lengths.
	if err := wellFormed(data); err != nil {
		return err
	}
	d := decPool.Get().(*msgpack.Decoder)
	r := bytes.NewReader(data)
	d.Reset(r)
	err := d.Decode(v)
	d.Reset(nil) // keep no reference to data in the pool
	decPool.Put(d)
	if err != nil {
		// The bytes are well-formed msgpack: a value has the wrong type.
		return fmt.Errorf("%w: %v", ErrBadType, err)
	}
	return nil
}

func isMap(b byte) bool { return b&0xf0 == 0x80 || b == 0xde || b == 0xdf }

// DecodeWorker decodes and validates a worker payload. It returns an error
// wrapping ErrOversize, ErrUndecodable, ErrBadType, ErrUnknownSchema or
// ErrInvalid.
func DecodeWorker(data []byte) (*Worker, error) {
	w := new(Worker)
	if len(data) > MaxPayload || !decodeWorkerFast(data, w, nil) {
		*w = Worker{}
		if err := unmarshal(data, w); err != nil {
			return nil, err
		}
	}
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return w, nil
}

// DecodeHive decodes and validates a hive payload. It returns an error
// wrapping ErrOversize, ErrUndecodable, ErrBadType, ErrUnknownSchema or
// ErrInvalid.
func DecodeHive(data []byte) (*Hive, error) {
	h := new(Hive)
	if len(data) > MaxPayload || !decodeHiveFast(data, h, nil) {
		*h = Hive{}
		if err := unmarshal(data, h); err != nil {
			return nil, err
		}
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return h, nil
}

// DecodeWorkerEntry decodes a worker registry value. It does not validate it:
// the queen validated the beat before storing it.
func DecodeWorkerEntry(data []byte) (*WorkerEntry, error) {
	e := new(WorkerEntry)
	if len(data) > MaxPayload || !decodeWorkerFast(data, &e.Worker, &e.Received) {
		*e = WorkerEntry{}
		if err := unmarshal(data, e); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// DecodeHiveEntry decodes a hive registry value without validating it.
func DecodeHiveEntry(data []byte) (*HiveEntry, error) {
	e := new(HiveEntry)
	if len(data) > MaxPayload || !decodeHiveFast(data, &e.Hive, &e.Received) {
		*e = HiveEntry{}
		if err := unmarshal(data, e); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// DecodeAny decodes any msgpack value into plain Go values (maps with string
// keys, slices, strings, numbers), for printing as JSON. Map keys that are not
// strings are printed as strings. It refuses oversize input and trailing bytes.
func DecodeAny(data []byte) (any, error) {
	if len(data) > 16*MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes", ErrOversize, len(data))
	}
	if err := wellFormed(data); err != nil {
		return nil, err
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

// SchemaOf returns the schema header value for a payload kind ("worker" or "hive").
func SchemaOf(kind string) string {
	if kind == "hive" {
		return SchemaHive
	}
	return SchemaWorker
}
