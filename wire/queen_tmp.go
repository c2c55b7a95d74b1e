package wire

// DecodeQueenEntry decodes a queen registry value without validating it.
func DecodeQueenEntry(data []byte) (*QueenEntry, error) {
	e := new(QueenEntry)
	if err := unmarshal(data, e); err != nil {
		return nil, err
	}
	return e, nil
}

// DecodeQueen decodes and validates a queen payload.
func DecodeQueen(data []byte) (*Queen, error) {
	q := new(Queen)
	if err := unmarshal(data, q); err != nil {
		return nil, err
	}
	return q, nil
}
