package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/engine"
	"github.com/rbee/heartbeat/internal/testutil"
)

// envFiles reads KEY=VALUE lines of the example environment files.
func envFiles(t *testing.T, paths ...string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			line := strings.TrimSpace(s.Text())
			if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
				env[k] = v
			}
		}
		f.Close()
	}
	return env
}

// execStart returns a unit's ExecStart as arguments, with its Environment=
// defaults, the environment env and the instance name substituted as
// systemd would: ${X} is one argument, $X splits on white space.
func execStart(t *testing.T, unit string, env map[string]string, instance string) []string {
	t.Helper()
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	var cmd string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Environment="); ok {
			for _, kv := range strings.Fields(v) {
				k, val, _ := strings.Cut(kv, "=")
				vars[k] = val
			}
		}
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			cmd = v
		}
	}
	for k, v := range env {
		vars[k] = v
	}
	var args []string
	for _, w := range strings.Fields(strings.ReplaceAll(cmd, "%i", instance)) {
		switch {
		case strings.HasPrefix(w, "${"):
			args = append(args, vars[strings.TrimSuffix(strings.TrimPrefix(w, "${"), "}")])
		case strings.HasPrefix(w, "$"):
			args = append(args, strings.Fields(vars[w[1:]])...)
		default:
			args = append(args, w)
		}
	}
	return args
}

// unitSetting returns the last value of key in a unit file's text.
func unitSetting(text, key string) string {
	var v string
	for _, line := range strings.Split(text, "\n") {
		if val, ok := strings.CutPrefix(line, key+"="); ok {
			v = val
		}
	}
	return v
}

// TestSystemdUnits checks deploy/: rbee accepts each ExecStart's flags with
// the example environment files; each unit restarts on a runtime failure
// (exit 1) but not on a bad flag (exit 2); the worker's stop timeout leaves
// room beyond the engine's stop grace for the goodbye; systemd-analyze
// accepts each unit and rates its sandbox "OK" (4.0 or below).
func TestSystemdUnits(t *testing.T) {
	bin := filepath.Join(rbeeBinary(t), "rbee")
	env := envFiles(t, "../deploy/rbee.env", "../deploy/queen.env", "../deploy/worker-llama-0.env")
	units := map[string]string{"rbee-queen.service": "", "rbee-hive.service": "", "rbee-worker@.service": "llama-0"}
	for unit, instance := range units {
		t.Run(unit, func(t *testing.T) {
			args := execStart(t, filepath.Join("../deploy", unit), env, instance)
			if len(args) < 2 || args[0] != "/usr/local/bin/rbee" {
				t.Fatalf("ExecStart %q", args)
			}
			// Flags parsed up to -h: an unknown or malformed flag fails.
			out, err := exec.Command(bin, append(args[1:], "-h")...).CombinedOutput()
			if err != nil {
				t.Fatalf("rbee %v -h: %v\n%s", args[1:], err, out)
			}
			b, err := os.ReadFile(filepath.Join("../deploy", unit))
			if err != nil {
				t.Fatal(err)
			}
			text := string(b)
			if r := unitSetting(text, "Restart"); r != "on-failure" && r != "always" {
				t.Errorf("Restart=%q: a runtime failure (exit 1) must be restarted", r)
			}
			if p := unitSetting(text, "RestartPreventExitStatus"); p != "2" {
				t.Errorf("RestartPreventExitStatus=%q: want 2 (a bad flag), and only that", p)
			}
			if unitSetting(text, "StartLimitIntervalSec") != "0" {
				t.Errorf("StartLimitIntervalSec is not 0: systemd gives up restarting after five quick failures")
			}
			stop, err := time.ParseDuration(unitSetting(text, "TimeoutStopSec"))
			if err != nil {
				t.Fatalf("TimeoutStopSec: %v", err)
			}
			if unit == "rbee-worker@.service" {
				if stop < engine.DefaultStopGrace+10*time.Second {
					t.Errorf("TimeoutStopSec=%s: want at least the engine's stop grace %s plus 10s for the goodbye", stop, engine.DefaultStopGrace)
				}
				if unitSetting(text, "KillMode") != "mixed" {
					t.Errorf("KillMode=%q: want mixed, so that SIGTERM reaches the worker alone and the engine's stop is the worker's", unitSetting(text, "KillMode"))
				}
			}
		})
	}
	sa := testutil.RequireTool(t, "systemd-analyze")
	dir := t.TempDir()
	var paths []string
	for unit := range units {
		b, err := os.ReadFile(filepath.Join("../deploy", unit))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(unit, "@.service") {
			unit = strings.Replace(unit, "@.", "@llama-0.", 1)
		}
		p := filepath.Join(dir, unit)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/rbee", bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(sa, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	level := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\S+)`)
	for _, p := range paths {
		out, err := exec.Command(sa, "security", "--offline=true", "--no-pager", p).CombinedOutput()
		m := level.FindSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", filepath.Base(p), err, out)
		}
		score, _ := strconv.ParseFloat(string(m[1]), 64)
		if score > 4.0 || string(m[2]) != "OK" {
			t.Errorf("%s: exposure %s %s, want 4.0 or below, OK:\n%s", filepath.Base(p), m[1], m[2], out)
		} else {
			t.Logf("%s: exposure %s %s", filepath.Base(p), m[1], m[2])
		}
	}
}

// TestDockerfileBuildIsTheDocs: the image is built with the build command
// docs/operations.md gives.
func TestDockerfileBuildIsTheDocs(t *testing.T) {
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	build := regexp.MustCompile(`(?m)^RUN (.*go build .*)$`).FindSubmatch(df)
	if build == nil {
		t.Fatal("no go build step in the Dockerfile")
	}
	cmd := regexp.MustCompile(`-o \S+`).ReplaceAllString(string(build[1]), "-o rbee")
	if !strings.Contains(string(readme), cmd) {
		t.Fatalf("docs/operations.md lacks the Dockerfile's build command:\n%s", cmd)
	}
	if !strings.Contains(cmd, "CGO_ENABLED=1") || !strings.Contains(cmd, "-tags nvml") {
		t.Fatalf("the image is built without cgo or the nvml tag, so without NVML: %s", cmd)
	}
}

// dockerJSON returns the JSON-array form of a Dockerfile instruction, as
// arguments: `CMD ["queen", "--listen", …]`.
func dockerJSON(t *testing.T, df, instr string) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + instr + ` (\[.*\])\s*$`).FindStringSubmatch(df)
	if m == nil {
		t.Fatalf("Dockerfile has no %s in JSON form", instr)
	}
	var args []string
	if err := json.Unmarshal([]byte(m[1]), &args); err != nil {
		t.Fatalf("%s %s: %v", instr, m[1], err)
	}
	return args
}

// nonLoopback returns an address of this machine beyond loopback, as
// another container reaches the queen's.
func nonLoopback(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	t.Skip("this machine has no IPv4 address beyond loopback")
	return ""
}

// TestDockerDefaultCommand runs the image's entrypoint and default command
// as the image would (the same build, outside docker, which needs a daemon):
// the queen it starts is reachable on an address beyond loopback, a hive
// beats into it from there with the credentials the queen names, the
// image's HEALTHCHECK passes, and the runtime image has CA certificates.
func TestDockerDefaultCommand(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	entry, cmd := dockerJSON(t, df, "ENTRYPOINT"), dockerJSON(t, df, "CMD")
	health := regexp.MustCompile(`(?m)^HEALTHCHECK .*CMD (\[.*\])\s*$`).FindStringSubmatch(df)
	if health == nil {
		t.Fatal("Dockerfile has no HEALTHCHECK … CMD [...]")
	}
	var hc []string
	if err := json.Unmarshal([]byte(health[1]), &hc); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^RUN .*apt-get install .*ca-certificates`).MatchString(strings.ReplaceAll(df, "\\\n", " ")) {
		t.Error("the runtime image installs no ca-certificates")
	}
	if len(entry) != 1 || entry[0] != "/usr/local/bin/rbee" || len(hc) < 1 || hc[0] != "/usr/local/bin/rbee" {
		t.Fatalf("ENTRYPOINT %q, HEALTHCHECK %q: want /usr/local/bin/rbee", entry, hc)
	}

	// The image's own addresses, on free ports, with the data volume in a
	// temporary directory.
	bin := filepath.Join(rbeeBinary(t), "rbee")
	ports := testutil.FreePorts(t, 2)
	port := strings.NewReplacer(":4222", fmt.Sprintf(":%d", ports[0]), ":8500", fmt.Sprintf(":%d", ports[1]), "/var/lib/rbee", t.TempDir())
	var args []string
	for _, a := range cmd {
		args = append(args, port.Replace(a))
	}
	if args[0] != "queen" || !slices.Contains(args, fmt.Sprintf("0.0.0.0:%d", ports[0])) || !slices.Contains(args, fmt.Sprintf("0.0.0.0:%d", ports[1])) {
		t.Fatalf("default command %q: want a queen on 0.0.0.0, broker and HTTP", cmd)
	}
	qout := start(t, []string{"NATS_URL="}, bin, args...)
	dataDir := port.Replace("/var/lib/rbee")
	testutil.Eventually(t, time.Minute, func() bool { return strings.Contains(qout.text(), "accepting heartbeats") },
		"the queen accepting heartbeats:\n%s", qout)

	// Beyond loopback the queen admits the identities it issued: a hive's
	// token and a viewer's, minted on the queen's machine (its data volume).
	token := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"token"}, append(args, "--data", dataDir)...)...).Output()
		if err != nil {
			t.Fatalf("rbee token %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	hiveToken := filepath.Join(t.TempDir(), "hive.token")
	if err := os.WriteFile(hiveToken, []byte(token("hive", "gpu-node-1")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	viewer := token("viewer", "ops")
	url := fmt.Sprintf("nats://%s:%d", nonLoopback(t), ports[0])
	hout := start(t, []string{"NATS_URL="}, bin, "hive", "--hive-id", "gpu-node-1", "--interval", "1s", "--nats-url", url,
		"--token-file", hiveToken)
	var checkOut []byte
	testutil.Eventually(t, 90*time.Second, func() bool {
		c := exec.Command(bin, "check", "hive", "gpu-node-1", "--nats-url", url)
		c.Env = append(os.Environ(), "RBEE_TOKEN="+viewer, "NATS_URL=")
		checkOut, err = c.CombinedOutput()
		return err == nil
	}, "the hive in the registry, read from %s: %s\nqueen:\n%s\nhive:\n%s", url, outOf{&checkOut}, qout, hout)

	var hargs []string
	for _, a := range hc[1:] {
		hargs = append(hargs, port.Replace(a))
	}
	testutil.Eventually(t, 90*time.Second, func() bool {
		checkOut, err = exec.Command(bin, hargs...).CombinedOutput()
		return err == nil
	}, "the HEALTHCHECK %q to pass: %s\nqueen:\n%s", hargs, outOf{&checkOut}, qout)
}

// outOf shows a command's latest output when a failure message is formatted.
type outOf struct{ b *[]byte }

func (o outOf) String() string { return string(*o.b) }
