package wire

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// addSeeds adds every file under testdata/seeds as a fuzz seed.
func addSeeds(f *testing.F) {
	f.Helper()
	files, _ := filepath.Glob(filepath.Join("testdata", "seeds", "*.msgpack"))
	if len(files) == 0 {
		f.Fatal("no seeds in testdata/seeds")
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func classified(err error) bool {
	for _, e := range []error{ErrUndecodable, ErrBadType, ErrUnknownSchema, ErrOversize, ErrInvalid} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// roundTrip checks that a value a decoder accepted survives a re-encode:
// Marshal succeeds and the same decoder accepts its bytes with the same
// result (compared as encoded).
func roundTrip[T any, P interface {
	*T
	Marshaler
}](t *testing.T, what string, v *T, decode func([]byte) (*T, error)) {
	t.Helper()
	b, err := Marshal(v)
	if err != nil {
		t.Fatalf("re-encode accepted %s: %v", what, err)
	}
	again, err := decode(b)
	if err != nil {
		t.Fatalf("re-decode accepted %s: %v", what, err)
	}
	if b2, _ := Marshal(again); !bytes.Equal(b, b2) {
		t.Fatalf("%s changed in a round trip:\n first  %+v\n second %+v", what, v, again)
	}
}

// check runs one decoder on data: it may not panic, a failure must be one
// of the documented errors, and a success must survive a round trip.
func check[T any, P interface {
	*T
	Marshaler
}](t *testing.T, what string, data []byte, decode func([]byte) (*T, error)) {
	t.Helper()
	v, err := decode(data)
	if err != nil {
		if !classified(err) {
			t.Fatalf("unclassified %s error: %v", what, err)
		}
		if v != nil {
			t.Fatalf("%s: an error and a value", what)
		}
		return
	}
	roundTrip[T, P](t, what, v, decode)
}

// FuzzDecode feeds arbitrary bytes to every decoder: none may panic, every
// failure is one of the documented errors, and whatever is accepted survives a
// re-encode unchanged. Where the reference library decodes the same bytes into
// the same type, it must get the same value.
func FuzzDecode(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		check(t, "worker", data, DecodeWorker)
		check(t, "hive", data, DecodeHive)
		check(t, "queen", data, DecodeQueen)
		check(t, "worker entry", data, DecodeWorkerEntry)
		check(t, "hive entry", data, DecodeHiveEntry)
		check(t, "queen entry", data, DecodeQueenEntry)
		check(t, "event", data, DecodeEvent)
		check(t, "ident", data, DecodeIdent)
		if w, err := DecodeWorker(data); err == nil {
			id, err := DecodeIdent(data)
			if err != nil || id.InstanceID != w.InstanceID || id.Seq != w.Seq || id.IntervalMs != w.IntervalMs {
				t.Fatalf("ident %+v (%v) of a worker beat %s/%d/%d", id, err, w.InstanceID, w.Seq, w.IntervalMs)
			}
		}
		if e, err := DecodeWorkerBeat(data); err == nil && e.Received != (Received{}) {
			t.Fatalf("a worker beat decoded with the queen's keys set: %+v", e.Received)
		}
		agreesWithReference(t, data, DecodeWorkerEntry)
		agreesWithReference(t, data, DecodeHiveEntry)
		agreesWithReference(t, data, DecodeQueenEntry)
		if _, err := DecodeAny(data); err != nil && !classified(err) {
			t.Fatalf("unclassified DecodeAny error: %v", err)
		}
	})
}

// agreesWithReference checks that where both the generated decoder and
// msgpack/v5 decode data into a T without error, they get the same value.
func agreesWithReference[T any, P interface {
	*T
	Marshaler
}](t *testing.T, data []byte, decode func([]byte) (*T, error)) {
	t.Helper()
	got, err := decode(data)
	if err != nil {
		return
	}
	want := new(T)
	if err := msgpack.Unmarshal(data, want); err != nil {
		return // msgpack/v5 refuses what the schema accepts: nothing to compare
	}
	// Compared as encoded: an empty array decodes to nil here and to an
	// empty slice there, and NaN is not equal to itself.
	a, _ := Marshal(got)
	b, _ := Marshal(want)
	if !bytes.Equal(a, b) {
		t.Fatalf("generated and reference decoders differ on %x:\n generated %+v\n reference %+v", data, got, want)
	}
}
