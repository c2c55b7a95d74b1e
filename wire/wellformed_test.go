package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestWellFormed(t *testing.T) {
	nested := func(depth int) []byte {
		return append(bytes.Repeat([]byte{0x91}, depth), 0x01)
	}
	good := map[string][]byte{
		"fixint":             {0x05},
		"negative fixint":    {0xff},
		"nil":                {0xc0},
		"empty map":          {0x80},
		"fixmap":             {0x81, 0xa1, 'a', 0x01},
		"map16":              {0xde, 0x00, 0x01, 0xa1, 'a', 0xc3},
		"array32":            {0xdd, 0x00, 0x00, 0x00, 0x02, 0x01, 0x02},
		"str8":               {0xd9, 0x02, 'h', 'i'},
		"bin16":              {0xc5, 0x00, 0x01, 0xaa},
		"float64":            {0xcb, 0, 0, 0, 0, 0, 0, 0, 0},
		"uint32":             {0xce, 0, 0, 0, 1},
		"fixext4":            {0xd6, 0xff, 0, 0, 0, 1},
		"ext8":               {0xc7, 0x02, 0x01, 0xaa, 0xbb},
		"nested to MaxDepth": nested(MaxDepth),
	}
	for name, b := range good {
		if err := wellFormed(b); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad := map[string][]byte{
		"empty":                    {},
		"reserved code":            {0xc1},
		"truncated fixmap":         {0x81, 0xa1, 'a'},
		"trailing byte":            {0x01, 0x02},
		"truncated str":            {0xa3, 'a'},
		"truncated length field":   {0xda, 0x00},
		"huge array32":             {0xdd, 0x7f, 0xff, 0xff, 0x80},
		"huge map32":               {0xdf, 0xff, 0xff, 0xff, 0xff, 0x01},
		"huge str32":               {0xdb, 0x7f, 0xff, 0xff, 0xff, 'a'},
		"huge bin32":               {0xc6, 0xff, 0xff, 0xff, 0xff},
		"huge ext32":               {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01},
		"hive with huge gpus":      append([]byte{0x81, 0xa4}, append([]byte("gpus"), 0xdd, 0x7f, 0xff, 0xff, 0x80)...),
		"map of 2 values, 3 bytes": {0x82, 0x01, 0x02, 0x03},
		"nested past MaxDepth":     nested(MaxDepth + 1),
	}
	for name, b := range bad {
		err := wellFormed(b)
		if !errors.Is(err, ErrUndecodable) {
			t.Errorf("%s: got %v, want ErrUndecodable", name, err)
		}
	}
}

// TestWellFormedAgreesWithMsgpack holds the check to the msgpack library: a
// value the check accepts is one the library skips whole.
func TestWellFormedAgreesWithMsgpack(t *testing.T) {
	w := sampleWorker()
	h := sampleHive()
	for _, v := range []any{w, h, map[string]any{"a": []any{1, "x", 2.5, nil, true, map[string]any{}}}} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := wellFormed(b); err != nil {
			t.Errorf("%T: %v", v, err)
		}
		for i := 0; i < len(b); i++ {
			if err := wellFormed(b[:i]); err == nil {
				t.Errorf("%T truncated to %d bytes accepted", v, i)
			}
		}
	}
}

// agreesWithSkip reports whether wellFormed and msgpack's Skip agree on data.
func agreesWithSkip(data []byte) (bool, string) {
	err := wellFormed(data)
	r := bytes.NewReader(data)
	d := msgpack.NewDecoder(r)
	skipErr := d.Skip()
	whole := skipErr == nil && r.Len() == 0
	switch {
	case err == nil && !whole:
		return false, "wellFormed accepted what msgpack cannot skip whole"
	case err != nil && whole && !strings.Contains(err.Error(), "nested deeper"):
		return false, "wellFormed refused what msgpack skips whole: " + err.Error()
	}
	return true, ""
}
