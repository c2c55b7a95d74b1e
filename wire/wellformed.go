package wire

import (
	"encoding/binary"
	"fmt"
)

// MaxDepth is the deepest nesting of maps and arrays a payload may have.
// Heartbeats nest three levels deep (hive → gpus → gpu).
const MaxDepth = 32

// wellFormed checks that b holds exactly one complete msgpack value, nested
// at most MaxDepth deep, whose every declared length fits in the bytes that
// follow it. It allocates nothing. The reflection decoder sizes slices, maps
// and strings from their declared lengths before reading them, so a few
// bytes declaring a 2³¹-element array would otherwise cost gigabytes; after
// this check, no declared length exceeds the input's length.
func wellFormed(b []byte) error {
	// open[d] is how many values are still to be read in the container
	// opened at depth d; open[0] is the top level, which holds one value.
	var open [MaxDepth + 1]int
	depth := 0
	open[0] = 1
	i := 0
	for {
		for open[depth] == 0 {
			if depth == 0 {
				if i != len(b) {
					return fmt.Errorf("%w: %d trailing bytes after the value", ErrUndecodable, len(b)-i)
				}
				return nil
			}
			depth--
		}
		open[depth]--
		if i >= len(b) {
			return fmt.Errorf("%w: truncated at byte %d", ErrUndecodable, i)
		}
		c := b[i]
		i++
		var size int   // bytes of data that follow the header
		var header int // bytes of length field to read first
		var items int  // values in a map or array
		container := false
		switch {
		case c <= 0x7f || c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		case c&0xf0 == 0x80:
			items, container = 2*int(c&0x0f), true
		case c&0xf0 == 0x90:
			items, container = int(c&0x0f), true
		case c&0xe0 == 0xa0:
			size = int(c & 0x1f)
		case c == 0xc4 || c == 0xd9:
			header = 1
		case c == 0xc5 || c == 0xda:
			header = 2
		case c == 0xc6 || c == 0xdb:
			header = 4
		case c == 0xc7:
			header, size = 1, 1
		case c == 0xc8:
			header, size = 2, 1
		case c == 0xc9:
			header, size = 4, 1
		case c == 0xca:
			size = 4
		case c == 0xcb:
			size = 8
		case c >= 0xcc && c <= 0xcf:
			size = 1 << (c - 0xcc)
		case c >= 0xd0 && c <= 0xd3:
			size = 1 << (c - 0xd0)
		case c >= 0xd4 && c <= 0xd8:
			size = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			header, container = 2, true
		case c == 0xdd:
			header, container = 4, true
		case c == 0xde:
			header, container = 2, true
		case c == 0xdf:
			header, container = 4, true
		default: // 0xc1 is never used
			return fmt.Errorf("%w: reserved code 0x%02x at byte %d", ErrUndecodable, c, i-1)
		}
		if header > 0 {
			if len(b)-i < header {
				return fmt.Errorf("%w: truncated at byte %d", ErrUndecodable, i)
			}
			var n uint64
			switch header {
			case 1:
				n = uint64(b[i])
			case 2:
				n = uint64(binary.BigEndian.Uint16(b[i:]))
			case 4:
				n = uint64(binary.BigEndian.Uint32(b[i:]))
			}
			i += header
			if n > uint64(len(b)) {
				return fmt.Errorf("%w: declared length %d exceeds the %d-byte input", ErrUndecodable, n, len(b))
			}
			switch {
			case !container:
				size += int(n)
			case c == 0xde || c == 0xdf:
				items = 2 * int(n)
			default:
				items = int(n)
			}
		}
		if size > len(b)-i {
			return fmt.Errorf("%w: declared length %d exceeds the %d bytes left", ErrUndecodable, size, len(b)-i)
		}
		i += size
		if !container || items == 0 {
			continue
		}
		// Every value takes at least one byte.
		if items > len(b)-i {
			return fmt.Errorf("%w: %d values declared, %d bytes left", ErrUndecodable, items, len(b)-i)
		}
		if depth == MaxDepth {
			return fmt.Errorf("%w: nested deeper than %d", ErrUndecodable, MaxDepth)
		}
		depth++
		open[depth] = items
	}
}
