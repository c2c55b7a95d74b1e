package publisher_test

import (
	"net/url"
	"strconv"
	"testing"

	"github.com/rbee/heartbeat/embedded"
)

func restartOnSamePort(t *testing.T, dir, u string) *embedded.Server {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(pu.Port())
	c := embedded.DefaultConfig(dir)
	c.Port = port
	s, err := embedded.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}
