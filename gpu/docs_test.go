package gpu

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/rbee/heartbeat/wire"
)

// wireKeys returns the msgpack keys of v's fields.
func wireKeys(v any) map[string]bool {
	keys := map[string]bool{}
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		if name, _, _ := strings.Cut(rt.Field(i).Tag.Get("msgpack"), ","); name != "" {
			keys[name] = true
		}
	}
	return keys
}

// TestDocsGPUs: every key docs/gpus.md's tables give (a hive beat's, a GPU
// record's `gpus[].…`, a hive's worker record's `workers[].…`) is a key of
// the hive/1 payload.
func TestDocsGPUs(t *testing.T) {
	b, err := os.ReadFile("../docs/gpus.md")
	if err != nil {
		t.Fatal(err)
	}
	hive, gpu, worker := wireKeys(wire.Hive{}), wireKeys(wire.GPU{}), wireKeys(wire.HiveWorker{})
	n := 0
	key := regexp.MustCompile("`((gpus|workers)\\[\\]\\.)?([a-z_]+)`")
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		prefix := "" // `gpus[].index`, `uuid`: the later keys of a cell share its first one's record
		for _, m := range key.FindAllStringSubmatch(strings.Split(line, "|")[1], -1) {
			n++
			if m[2] != "" {
				prefix = m[2]
			}
			want := hive
			switch prefix {
			case "gpus":
				want = gpu
			case "workers":
				want = worker
			}
			if !want[m[3]] {
				t.Errorf("docs/gpus.md gives %s, which the hive/1 payload does not have", m[0])
			}
		}
	}
	if n < 20 {
		t.Fatalf("docs/gpus.md's tables give %d keys", n)
	}
}
