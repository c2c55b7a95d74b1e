package embedded

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Two servers on one store directory: the second is refused, saying why,
// until the first shuts down.
func TestDataDirLockTwoServers(t *testing.T) {
	c := testConfig(t)
	first := startServer(t, c)
	_, err := New(c)
	if !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second server on %s: %v, want ErrDataDirInUse", c.StoreDir, err)
	}
	if !strings.Contains(err.Error(), c.StoreDir) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
		t.Fatalf("message %q does not name the directory and the holder", err)
	}
	first.Shutdown()
	second := startServer(t, c)
	second.Shutdown()
}

// A start that fails after taking the lock (a taken port) releases it.
func TestDataDirLockReleasedOnFailedStart(t *testing.T) {
	other := startServer(t, testConfig(t))
	c := testConfig(t)
	c.Port = other.NATS().Addr().(*net.TCPAddr).Port
	if _, err := New(c); !errors.Is(err, ErrListen) {
		t.Fatalf("taken port: %v", err)
	}
	c.Port = -1
	startServer(t, c).Shutdown()
}

// The lock holds across processes: a child process holding the directory
// keeps this one out until it exits.
func TestDataDirLockChildProcess(t *testing.T) {
	if dir := os.Getenv("EMBEDDED_LOCK_CHILD_DIR"); dir != "" {
		c := DefaultConfig(dir)
		c.Port = -1
		s, err := New(c)
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		fmt.Println("LOCKED")
		_, _ = io.Copy(io.Discard, os.Stdin) // hold until the parent closes stdin
		s.Shutdown()
		os.Exit(0)
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDataDirLockChildProcess$")
	cmd.Env = append(os.Environ(), "EMBEDDED_LOCK_CHILD_DIR="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	go func() { _, _ = io.Copy(io.Discard, stdout); done <- cmd.Wait() }()
	if err != nil || strings.TrimSpace(line) != "LOCKED" {
		t.Fatalf("child: %q, %v", line, err)
	}

	c := testConfig(t)
	c.StoreDir = dir
	_, err = New(c)
	if !errors.Is(err, ErrDataDirInUse) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", cmd.Process.Pid)) {
		t.Fatalf("while the child holds %s: %v, want ErrDataDirInUse naming pid %d", dir, err, cmd.Process.Pid)
	}
	_ = stdin.Close()
	var s *Server
	checkFor(t, 10*time.Second, func() error {
		s, err = New(c)
		return err
	})
	s.Shutdown()
}
