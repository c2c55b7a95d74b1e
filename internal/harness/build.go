package harness

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
)

// BuildRbee builds cmd/rbee into dir and returns the binary's path. It works
// from any folder inside the module.
func BuildRbee(dir string) (string, error) {
	return build(dir, "rbee", "github.com/rbee/heartbeat/cmd/rbee")
}

// BuildNATSServer builds the nats-server this module requires (from the
// module cache: the very version the embedded broker runs) into dir and
// returns the binary's path.
func BuildNATSServer(dir string) (string, error) {
	return build(dir, "nats-server", "github.com/nats-io/nats-server/v2")
}

func build(dir, name, pkg string) (string, error) {
	bin := filepath.Join(dir, name)
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
}

// FreePorts returns n loopback TCP ports that were free a moment ago. They
// are held open together, so the n are distinct.
func FreePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
