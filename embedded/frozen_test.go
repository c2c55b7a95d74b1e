package embedded

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// A process stopped with SIGSTOP (a frozen worker) is reported disconnected:
// the server's pings go unanswered and it closes the connection.
func TestAdvisoryForStoppedProcess(t *testing.T) {
	if url := os.Getenv("EMBEDDED_FROZEN_CHILD_URL"); url != "" {
		nc, err := nats.Connect(url, nats.Name("frozen-child"))
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		fmt.Println("CONN", ConnID(nc))
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	c := testConfig(t)
	c.PingInterval, c.MaxPingsOut = 200*time.Millisecond, 2
	s := startServer(t, c)
	adv := watchAdvisories(t, connect(t, s.ClientURL()), Account)

	cmd := exec.Command(os.Args[0], "-test.run=^TestAdvisoryForStoppedProcess$")
	cmd.Env = append(os.Environ(), "EMBEDDED_FROZEN_CHILD_URL="+s.ClientURL())
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	id, ok := strings.CutPrefix(strings.TrimSpace(line), "CONN ")
	if err != nil || !ok {
		t.Fatalf("child: %q, %v", line, err)
	}
	checkFor(t, 5*time.Second, func() error { _, err := adv.find(ConnectAdvisoryType, id); return err })
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error { _, err := adv.find(DisconnectAdvisoryType, id); return err })
	if a, _ := adv.find(DisconnectAdvisoryType, id); a.Reason != server.StaleConnection.String() {
		t.Fatalf("reason %q, want %q", a.Reason, server.StaleConnection.String())
	}
}

// A subscriber that stops reading while messages flow to it (a frozen queen
// under load) is dropped by the write deadline, and reported.
func TestAdvisoryForSubscriberThatStopsReading(t *testing.T) {
	c := testConfig(t)
	c.PingInterval = time.Hour // only the write deadline can drop it here
	c.WriteDeadline = 200 * time.Millisecond
	s := startServer(t, c)
	adv := watchAdvisories(t, connect(t, s.ClientURL()), Account)

	raw, info := rawClient(t, s)
	if _, err := fmt.Fprint(raw, "SUB rbee.hb.> q 1\r\nPING\r\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := info.r.ReadString('\n'); err != nil || strings.TrimSpace(line) != "PONG" {
		t.Fatalf("PONG: %q, %v", line, err)
	}
	// From here on the subscriber reads nothing.
	pub := connect(t, s.ClientURL())
	payload := make([]byte, 64<<10)
	checkFor(t, 30*time.Second, func() error {
		for range 64 {
			if err := pub.Publish("rbee.hb.worker.h.w", payload); err != nil {
				return err
			}
		}
		if err := pub.Flush(); err != nil {
			return err
		}
		_, err := adv.find(DisconnectAdvisoryType, info.id)
		return err
	})
	if a, _ := adv.find(DisconnectAdvisoryType, info.id); !strings.Contains(a.Reason, "Slow Consumer") {
		t.Fatalf("reason %q, want a slow consumer", a.Reason)
	}
}
