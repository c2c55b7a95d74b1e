package integration

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
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

// TestSystemdUnits checks deploy/: systemd-analyze accepts each unit, and
// rbee accepts each ExecStart's flags with the example environment files.
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
		})
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: unit syntax not checked")
	}
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
	if !strings.Contains(cmd, "CGO_ENABLED=1") {
		t.Fatalf("the image is built without cgo, so without NVML: %s", cmd)
	}
}
