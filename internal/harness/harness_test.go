package harness

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		want       time.Duration
		err        bool
	}{
		{"plain", "123 (rbee) S 1 123 123 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 0 0", 3250 * time.Millisecond, false},
		{"name with spaces and parens", "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0", 30 * time.Millisecond, false},
		{"short", "7 (x) R 1 7", 0, true},
		{"no name", "7 x R", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU(tc.line)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("parseStatCPU = %v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
	if _, err := CPUTime(os.Getpid()); err != nil {
		t.Errorf("CPUTime(self): %v", err)
	}
	if Status(os.Getpid(), "VmRSS:") <= 0 {
		t.Error("Status(self, VmRSS:) is not positive")
	}
}

func TestScrape(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# HELP x y\nrbee_a_total{kind=\"worker\",event=\"expired\"} 3\nrbee_a_total{kind=\"hive\",event=\"expired\"} 1\nrbee_b 2.5\n")
	}))
	defer srv.Close()
	m, err := Scrape(strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum(Named("rbee_a_total"), `kind="worker"`); got != 3 {
		t.Errorf("worker expiries = %v, want 3", got)
	}
	if m.ByName["rbee_a_total"] != 4 || m.ByName["rbee_b"] != 2.5 {
		t.Errorf("ByName = %v", m.ByName)
	}
}

func TestStart(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	p, err := Start("sh", "sh", []string{"-c", "echo one; echo level=WARN two; echo three >&2"},
		Options{Patterns: []string{"level=warn"}, OnLine: func(l string) { mu.Lock(); seen = append(seen, l); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		p.Kill()
		t.Fatal("sh did not end")
	}
	if n, all := p.Count("level=warn"); n != 1 || all != 3 {
		t.Errorf("Count = %d of %d, want 1 of 3", n, all)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || p.ExitCode() != 0 || !strings.Contains(p.Output(), "three") {
		t.Errorf("lines %q, exit %d, output %q", seen, p.ExitCode(), p.Output())
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	p, err := Start("sh", "sh", []string{"-c", "trap '' TERM; sleep 30; echo never"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.Stop(200 * time.Millisecond)
	if !p.Exited() || time.Since(start) > 10*time.Second {
		t.Errorf("Stop left the process running (exited %v after %s)", p.Exited(), time.Since(start))
	}
}
