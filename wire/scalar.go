package wire

import (
	"math"

	"github.com/tinylib/msgp/msgp"
)

// mpFloat64 is how the generated codec reads and writes every float64 of the
// payload types (msgp:replace in types.go). docs/wire.md lets a sender write
// a float with an integral value as an integer ("util_percent": 87), and
// senders in other languages do, so a float key accepts every integer format
// as well as float 32 and float 64, and nil as 0; msgp's own float reader
// accepts floats only. An integral value within the int64 range is written as
// an integer, anything else as a float 64. Only msgp's primitives write bytes.
type mpFloat64 float64

// MarshalMsg appends f: an integer when its value is integral, else a float 64.
func (f *mpFloat64) MarshalMsg(b []byte) ([]byte, error) {
	v := float64(*f)
	if v >= math.MinInt64 && v < math.MaxInt64 && v == math.Trunc(v) {
		return msgp.AppendInt64(b, int64(v)), nil
	}
	return msgp.AppendFloat64(b, v), nil
}

// Msgsize returns the most bytes MarshalMsg appends.
func (f *mpFloat64) Msgsize() int { return max(msgp.Float64Size, msgp.Int64Size) }

// UnmarshalMsg reads a float 32, float 64, any integer or nil into f and
// returns the bytes after it.
func (f *mpFloat64) UnmarshalMsg(b []byte) ([]byte, error) {
	switch msgp.NextType(b) {
	case msgp.NilType:
		*f = 0
		return msgp.ReadNilBytes(b)
	case msgp.IntType:
		v, o, err := msgp.ReadInt64Bytes(b)
		*f = mpFloat64(v)
		return o, err
	case msgp.UintType:
		v, o, err := msgp.ReadUint64Bytes(b)
		*f = mpFloat64(v)
		return o, err
	case msgp.Float64Type, msgp.Float32Type:
	default:
		// Said before msgp's reader, which checks the length first and so
		// calls a short value of another type "too few bytes".
		return b, msgp.TypeError{Method: msgp.Float64Type, Encoded: msgp.NextType(b)}
	}
	v, o, err := msgp.ReadFloat64Bytes(b)
	*f = mpFloat64(v)
	return o, err
}
