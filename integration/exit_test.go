package integration

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExitCodes runs the built binary: a port another process holds is a
// runtime failure (exit 1, which the systemd units restart on), a bad flag is
// a usage error (exit 2, which they do not), each with one line saying what
// to do.
func TestExitCodes(t *testing.T) {
	bin := filepath.Join(rbeeBinary(t), "rbee")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().String()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"broker port taken", []string{"queen", "--listen", taken, "--http", "off"}, 1, "give --listen another address"},
		{"http port taken", []string{"queen", "--listen", "127.0.0.1:-1", "--http", taken}, 1, "give --http another address"},
		{"demo broker port taken", []string{"demo", "--listen", taken, "--http", "off"}, 1, "give --listen another address"},
		{"bad flag value", []string{"queen", "--missed", "1"}, 2, "missed"},
		{"unknown flag", []string{"queen", "--nope"}, 2, "rbee queen: flag provided but not defined: -nope (see 'rbee queen -h')\n"},
		{"bad id", []string{"worker", "--hive-id", "a.b", "--worker-id", "w"}, 2, "a.b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, append(tt.args, "--data", t.TempDir())...)
			if tt.args[0] != "queen" {
				cmd = exec.Command(bin, tt.args...)
			}
			cmd.Env = append(cmd.Environ(), "NATS_URL=")
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tt.code || !strings.Contains(string(out), tt.want) {
				t.Fatalf("rbee %v: %v, want exit %d with %q:\n%s", tt.args, err, tt.code, tt.want, out)
			}
			if tt.code == 2 && strings.Count(string(out), "\n") != 1 {
				t.Fatalf("rbee %v: want one line, got:\n%s", tt.args, out)
			}
		})
	}
}
