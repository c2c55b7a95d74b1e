package wire

// StampConn sets the connection the beat is sent on ("<server_id>/<client_id>").
func (m *Meta) StampConn(conn string) { m.Conn = conn }
