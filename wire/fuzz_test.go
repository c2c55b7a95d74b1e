package wire

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
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

// FuzzDecode feeds arbitrary bytes to every decoder: none may panic, every
// failure is one of the documented errors, and whatever is accepted survives a
// re-encode unchanged.
func FuzzDecode(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if w, err := DecodeWorker(data); err == nil {
			b, err := Marshal(w)
			if err != nil {
				t.Fatalf("re-encode accepted worker: %v", err)
			}
			if _, err := DecodeWorker(b); err != nil {
				t.Fatalf("re-decode accepted worker: %v", err)
			}
		} else if !classified(err) {
			t.Fatalf("unclassified worker error: %v", err)
		}
		if h, err := DecodeHive(data); err == nil {
			b, err := Marshal(h)
			if err != nil {
				t.Fatalf("re-encode accepted hive: %v", err)
			}
			if _, err := DecodeHive(b); err != nil {
				t.Fatalf("re-decode accepted hive: %v", err)
			}
		} else if !classified(err) {
			t.Fatalf("unclassified hive error: %v", err)
		}
		if ok, why := agreesWithSkip(data); !ok {
			t.Fatal(why)
		}
		_, _ = DecodeWorkerEntry(data)
		_, _ = DecodeHiveEntry(data)
		_, _ = DecodeAny(data)
	})
}
