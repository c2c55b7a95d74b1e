package wire

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/golden from the fixed sample values in golden_test.go")

// schemaDoc is the schema document the golden fixtures are held to.
const schemaDoc = "../docs/wire.md"

func gptr[T any](v T) *T { return &v }

// goldenWorker is the worker/1 sample behind testdata/golden/worker.msgpack.
func goldenWorker() Worker {
	return Worker{
		Meta: Meta{
			V:            1,
			InstanceID:   "01JH3Q8Z5K2M7N4P6R8T0V2X4Y",
			Seq:          1042,
			SentAtMs:     1767225600000,
			IntervalMs:   30000,
			Health:       Degraded,
			HealthReason: "kv cache 93% full",
			Conn:         "NCXKQF6PMYOTZCHXAWRDKS5PGBKVXT6NQUZGQSHZ6W7EDK52NUZ7DBGB/41",
		},
		HiveID:     "gpu-node-01",
		WorkerID:   "llama-8b-0",
		Status:     StatusBusy,
		ModelID:    "meta-llama/Llama-3.1-8B-Instruct",
		Device:     "cuda:0",
		URL:        "http://10.0.0.11:9001",
		Version:    "0.4.2",
		SlotsTotal: 8,
		SlotsBusy:  6,
		// The optional keys, all present so that the fixture shows them.
		RequestsWaiting: gptr(3),
		Progress:        gptr[uint64](18446744),
		PID:             48213,
		Engine:          "vllm",
		EngineStale:     true,
		EngineAgeMs:     4100,
		KVCachePercent:  gptr(93.5),
		Sleeping:        true,
	}
}

// goldenHive is the hive/1 sample behind testdata/golden/hive.msgpack: eight
// GPUs (one that answers nothing, one without a power reading, one unwell),
// three workers, and every optional key present.
func goldenHive() Hive {
	const vram = 85520809984 // an 80 GB H100 as NVML reports it
	gpu := func(i int, used uint64, util, temp, power float64) GPU {
		return GPU{
			Index:          i,
			UUID:           fmt.Sprintf("GPU-5c1b7f3a-9d2e-4c6b-8a1f-00000000000%d", i),
			Name:           "NVIDIA H100 80GB HBM3",
			VRAMUsedBytes:  gptr(used),
			VRAMTotalBytes: gptr[uint64](vram),
			UtilPercent:    gptr(util),
			TemperatureC:   gptr(temp),
			PowerW:         gptr(power),
		}
	}
	gpus := []GPU{
		gpu(0, 71940702208, 87, 64, 512.25),
		gpu(1, 71940702208, 91, 66, 538.5),
		gpu(2, 19327352832, 34.5, 49, 221.75),
		gpu(3, 19327352832, 12, 45, 131),
		gpu(4, 566231040, 0, 33, 69.5),
		// GPU 5 fell off the bus: NVML still lists it but reads nothing.
		{Index: 5, UUID: "GPU-5c1b7f3a-9d2e-4c6b-8a1f-000000000005", Name: "NVIDIA H100 80GB HBM3",
			Health: Unhealthy, HealthReason: "xid 79: gpu has fallen off the bus",
			Xid: gptr(79), XidAtMs: 1767225571004, RecoveryAction: "node_reboot"},
		// GPU 6 has no power sensor reading.
		{Index: 6, UUID: "GPU-5c1b7f3a-9d2e-4c6b-8a1f-000000000006", Name: "NVIDIA H100 80GB HBM3",
			VRAMUsedBytes: gptr[uint64](566231040), VRAMTotalBytes: gptr[uint64](vram), UtilPercent: gptr(0.0), TemperatureC: gptr(31.0)},
		gpu(7, 566231040, 0, 32, 68.25),
	}
	gpus[2].Health, gpus[2].HealthReason = Degraded, "ecc: 2 pending page retirements"
	return Hive{
		Meta: Meta{
			V:            1,
			InstanceID:   "01JH3Q4R7B9C1D3F5G7H9J1K3M",
			Seq:          311,
			SentAtMs:     1767225601250,
			IntervalMs:   30000,
			Health:       Degraded,
			HealthReason: "gpu 5: xid 79: gpu has fallen off the bus",
			Conn:         "NCXKQF6PMYOTZCHXAWRDKS5PGBKVXT6NQUZGQSHZ6W7EDK52NUZ7DBGB/7",
		},
		HiveID:           "gpu-node-01",
		Hostname:         "gpu-node-01.dc1.example.net",
		Version:          "0.4.2",
		CPUPercent:       37.25,
		RAMUsedBytes:     412316860416,
		RAMTotalBytes:    2163596886016,
		HostTemperatureC: gptr(48.5),
		StatsStale:       true,
		StatsAgeMs:       31250,
		GPUs:             gpus,
		Workers: []HiveWorker{
			{WorkerID: "llama-8b-0", Status: StatusBusy, Health: Degraded, ModelID: "meta-llama/Llama-3.1-8B-Instruct", Device: "cuda:0", LastSeenMs: 1767225600004,
				PID: 48213, VRAMUsedBytes: gptr[uint64](71404879872), GPUUUIDs: []string{"GPU-5c1b7f3a-9d2e-4c6b-8a1f-000000000000"}},
			{WorkerID: "llama-70b-0", Status: StatusReady, Health: Healthy, ModelID: "meta-llama/Llama-3.1-70B-Instruct", Device: "cuda:1", LastSeenMs: 1767225589310},
			{WorkerID: "embed-0", Status: StatusStarting, Health: Healthy, ModelID: "BAAI/bge-m3", Device: "cuda:2", LastSeenMs: 1767225598777},
		},
		WorkersOmitted: 2,
	}
}

func goldenWorkerEntry() WorkerEntry {
	return WorkerEntry{Worker: goldenWorker(), Received: Received{ReceivedAtMs: 1767225600012, FirstSeenMs: 1767196800031, SkewMs: 12,
		Liveness: LivenessStalled, LivenessSinceMs: 1767225600012, ProgressAtMs: 1767225510007, Conflict: true}}
}

func goldenHiveEntry() HiveEntry {
	return HiveEntry{Hive: goldenHive(), Received: Received{ReceivedAtMs: 1767225601247, FirstSeenMs: 1767196799410, SkewMs: -3,
		Liveness: LivenessDisconnected, LivenessSinceMs: 1767225603188, Conflict: true}}
}

// goldenQueen is the queen/1 sample behind testdata/golden/queen.msgpack: a
// queen that falls behind.
func goldenQueen() Queen {
	return Queen{
		Meta: Meta{
			V:            1,
			InstanceID:   "01JH3QA2C4E6G8J0K2M4N6P8R0",
			Seq:          2881,
			SentAtMs:     1767225602500,
			IntervalMs:   5000,
			Health:       Degraded,
			HealthReason: "overloaded",
			Conn:         "NCXKQF6PMYOTZCHXAWRDKS5PGBKVXT6NQUZGQSHZ6W7EDK52NUZ7DBGB/3",
		},
		QueenID:     "sched-01-3f9a",
		Hostname:    "sched-01.dc1.example.net",
		Version:     "0.4.2",
		State:       QueenDegraded,
		Reason:      "overloaded",
		Backlog:     1520,
		WriteLagMs:  850,
		LastWriteMs: 1767225602431,
		Dropped:     0,
		Coalesced:   48211,
		Entries:     10240,
	}
}

func goldenQueenEntry() QueenEntry {
	return QueenEntry{Queen: goldenQueen(), Received: Received{ReceivedAtMs: 1767225602503, FirstSeenMs: 1767210000120, SkewMs: 3,
		Liveness: LivenessAlive, LivenessSinceMs: 1767210000120, Conflict: true}}
}

// goldenEvent is the sample behind testdata/golden/event.msgpack.
func goldenEvent() Event {
	return Event{
		V:            1,
		Event:        "updated",
		Kind:         "worker",
		Key:          "gpu-node-01.llama-8b-0",
		HiveID:       "gpu-node-01",
		WorkerID:     "llama-8b-0",
		AtMs:         1767225600015,
		Revision:     884213,
		QueenID:      "sched-01-3f9a",
		Previous:     "ready",
		InstanceID:   "01JH3Q8Z5K2M7N4P6R8T0V2X4Y",
		Status:       "busy",
		Health:       "degraded",
		HealthReason: "kv cache 93% full",
		Liveness:     "alive",
		ModelID:      "meta-llama/Llama-3.1-8B-Instruct",
	}
}

// goldenCase ties a fixture file to its sample, its decoder and the record
// kinds of docs/wire.md its keys must match.
type goldenCase struct {
	file   string
	sample func() any                // pointer to the sample value
	decode func([]byte) (any, error) // the package's decoder for the fixture
	top    []string                  // doc records whose keys make up the top-level map
	nested map[string]string         // array key -> doc record of its elements
	absent []string                  // documented keys the record never carries (progress_at_ms of a hive)
}

func goldenCases() []goldenCase {
	hiveNested := map[string]string{"gpus": "gpu", "workers": "hive_worker"}
	return []goldenCase{
		{
			file:   "worker.msgpack",
			sample: func() any { v := goldenWorker(); return &v },
			decode: func(b []byte) (any, error) { return DecodeWorker(b) },
			top:    []string{"common", "worker"},
		},
		{
			file:   "hive.msgpack",
			sample: func() any { v := goldenHive(); return &v },
			decode: func(b []byte) (any, error) { return DecodeHive(b) },
			top:    []string{"common", "hive"},
			nested: hiveNested,
		},
		{
			file:   "worker_entry.msgpack",
			sample: func() any { v := goldenWorkerEntry(); return &v },
			decode: func(b []byte) (any, error) { return DecodeWorkerEntry(b) },
			top:    []string{"common", "worker", "entry"},
		},
		{
			file:   "hive_entry.msgpack",
			sample: func() any { v := goldenHiveEntry(); return &v },
			decode: func(b []byte) (any, error) { return DecodeHiveEntry(b) },
			top:    []string{"common", "hive", "entry"},
			nested: hiveNested,
			absent: []string{"progress_at_ms"},
		},
		{
			file:   "queen.msgpack",
			sample: func() any { v := goldenQueen(); return &v },
			decode: func(b []byte) (any, error) { return DecodeQueen(b) },
			top:    []string{"common", "queen"},
		},
		{
			file:   "queen_entry.msgpack",
			sample: func() any { v := goldenQueenEntry(); return &v },
			decode: func(b []byte) (any, error) { return DecodeQueenEntry(b) },
			top:    []string{"common", "queen", "entry"},
			absent: []string{"progress_at_ms"},
		},
		{
			file:   "event.msgpack",
			sample: func() any { v := goldenEvent(); return &v },
			decode: func(b []byte) (any, error) { return DecodeEvent(b) },
			top:    []string{"event"},
		},
	}
}

func goldenPath(name string) string { return filepath.Join("testdata", "golden", name) }

// TestGolden holds the encoding to the committed fixtures in both
// directions (go test ./wire -run Golden -update-golden rewrites them).
func TestGolden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.file, func(t *testing.T) {
			want, err := Marshal(tc.sample())
			if err != nil {
				t.Fatal(err)
			}
			p := goldenPath(tc.file)
			if *updateGolden {
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, want, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("encoding the sample differs from %s: the wire format changed (if on purpose, update docs/wire.md and run go test ./wire -run Golden -update-golden)\n got  %x\n want %x", p, want, got)
			}
			dec, err := tc.decode(got)
			if err != nil {
				t.Fatalf("decode %s: %v", p, err)
			}
			if !reflect.DeepEqual(dec, tc.sample()) {
				t.Errorf("decoding %s does not give the sample:\n got  %+v\n want %+v", p, dec, tc.sample())
			}
		})
	}
}

// referenceMarshal encodes v with msgpack/v5, compact integers and floats:
// the reference encoder the generated codec is held to. Map keys (of a Go
// map; structs keep their field order) are sorted, so the bytes are stable.
func referenceMarshal(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	e.UseCompactInts(true)
	e.UseCompactFloats(true)
	e.SetSortMapKeys(true)
	if err := e.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// canonical returns msgpack/v5's encoding of data read generically, with map
// keys sorted and every number in its most compact form, so that two
// encodings of the same data give the same bytes.
func canonical(t testing.TB, data []byte) []byte {
	t.Helper()
	v, err := DecodeAny(data)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	e.UseCompactInts(true)
	e.UseCompactFloats(true)
	e.SetSortMapKeys(true)
	if err := e.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestGoldenMatchesReference holds the generated codec and msgpack/v5 to the
// same bytes. The two write the same maps, keys, strings and floats; they
// differ in one choice only, the integer format of a non-negative value of a
// signed Go type (msgp writes 1042 as int16 d1 04 12, msgpack/v5 as uint16
// cd 04 12; for 128-255 and 32768-65535 msgp's signed format is one or two
// bytes longer), so the bytes are compared in canonical form. Each library
// also decodes the other's encoding to the sample.
func TestGoldenMatchesReference(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.file, func(t *testing.T) {
			ours, err := Marshal(tc.sample())
			if err != nil {
				t.Fatal(err)
			}
			ref := referenceMarshal(t, tc.sample())
			if a, b := canonical(t, ours), canonical(t, ref); !bytes.Equal(a, b) {
				t.Fatalf("generated and reference encodings hold different data:\n generated %x\n reference %x", ours, ref)
			}
			dec, err := tc.decode(ref)
			if err != nil {
				t.Fatalf("decode the reference encoding: %v", err)
			}
			if !reflect.DeepEqual(dec, tc.sample()) {
				t.Errorf("the reference encoding decodes to\n %+v\n want %+v", dec, tc.sample())
			}
			back := reflect.New(reflect.TypeOf(tc.sample()).Elem()).Interface()
			if err := msgpack.Unmarshal(ours, back); err != nil {
				t.Fatalf("msgpack/v5 decodes the generated encoding: %v", err)
			}
			if !reflect.DeepEqual(back, tc.sample()) {
				t.Errorf("msgpack/v5 decodes the generated encoding to\n %+v\n want %+v", back, tc.sample())
			}
		})
	}
}

// docKey is one documented key: a row of a key table in docs/wire.md.
type docKey struct {
	name, typ, presence string
}

// docRecords parses the key tables of docs/wire.md. A table belongs to the
// record named by the closest preceding "<!-- wire:keys NAME -->" marker;
// its rows whose first cell is a backticked key are the record's keys.
func docRecords(t *testing.T) map[string][]docKey {
	t.Helper()
	f, err := os.Open(schemaDoc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs := map[string][]docKey{}
	var cur string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if name, ok := strings.CutPrefix(line, "<!-- wire:keys "); ok {
			cur = strings.TrimSpace(strings.TrimSuffix(name, "-->"))
			if _, dup := recs[cur]; dup {
				t.Fatalf("%s: record %q is marked twice", schemaDoc, cur)
			}
			recs[cur] = nil
			continue
		}
		if cur == "" {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			if line != "" && len(recs[cur]) > 0 { // the table ended
				cur = ""
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) < 3 || !strings.HasPrefix(cells[0], "`") || !strings.HasSuffix(cells[0], "`") {
			continue // header or separator row
		}
		recs[cur] = append(recs[cur], docKey{name: strings.Trim(cells[0], "`"), typ: cells[1], presence: cells[2]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"common", "worker", "hive", "gpu", "hive_worker", "entry", "queen", "event"} {
		if len(recs[name]) == 0 {
			t.Fatalf("%s documents no keys for record %q (marker <!-- wire:keys %s --> before its table)", schemaDoc, name, name)
		}
	}
	return recs
}

func keyNames(keys []docKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.name)
	}
	sort.Strings(out)
	return out
}

func (tc goldenCase) docKeys(recs map[string][]docKey) []docKey {
	var out []docKey
	for _, r := range tc.top {
		for _, k := range recs[r] {
			if !slices.Contains(tc.absent, k.name) {
				out = append(out, k)
			}
		}
	}
	return out
}

func mapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// diffKeys describes how the keys found differ from the documented ones.
func diffKeys(found, documented []string) string {
	var b strings.Builder
	for _, k := range found {
		if !slices.Contains(documented, k) {
			fmt.Fprintf(&b, " undocumented %q;", k)
		}
	}
	for _, k := range documented {
		if !slices.Contains(found, k) {
			fmt.Fprintf(&b, " documented but absent %q;", k)
		}
	}
	return b.String()
}

func readGeneric(t *testing.T, file string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(goldenPath(file))
	if err != nil {
		t.Fatal(err)
	}
	v, err := DecodeAny(b)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s is a %T, not a map", file, v)
	}
	return m
}

// checkType reports whether a generically decoded value matches a type
// column of docs/wire.md.
func checkType(typ string, v any) bool {
	isInt := func() bool {
		switch v.(type) {
		case int8, int16, int32, int64, uint8, uint16, uint32, uint64:
			return true
		}
		return false
	}
	switch {
	case typ == "string":
		_, ok := v.(string)
		return ok
	case typ == "bool":
		_, ok := v.(bool)
		return ok
	case typ == "int":
		return isInt()
	case typ == "uint":
		if !isInt() {
			return false
		}
		n, ok := v.(int64)
		return !ok || n >= 0
	case typ == "float":
		switch v.(type) {
		case float32, float64:
			return true
		}
		return isInt() // integral floats are written as integers
	case strings.HasPrefix(typ, "array"):
		_, ok := v.([]any)
		return ok || v == nil
	}
	return false
}

// checkRecord compares the keys of one generic map with the documented ones
// and the type of each value with the documented type.
func checkRecord(t *testing.T, where string, m map[string]any, doc []docKey) {
	t.Helper()
	if d := diffKeys(mapKeys(m), keyNames(doc)); d != "" {
		t.Errorf("%s: keys differ from %s:%s", where, schemaDoc, d)
	}
	for _, k := range doc {
		if v, ok := m[k.name]; ok && !checkType(k.typ, v) {
			t.Errorf("%s: key %q holds %T (%v), %s documents %q", where, k.name, v, v, schemaDoc, k.typ)
		}
	}
}

// TestGoldenKeysDocumented checks that each fixture, read as a generic
// msgpack map, has exactly the keys docs/wire.md documents for its record,
// with values of the documented types.
func TestGoldenKeysDocumented(t *testing.T) {
	recs := docRecords(t)
	for _, tc := range goldenCases() {
		t.Run(tc.file, func(t *testing.T) {
			m := readGeneric(t, tc.file)
			checkRecord(t, tc.file, m, tc.docKeys(recs))
			for key, rec := range tc.nested {
				arr, ok := m[key].([]any)
				if !ok || len(arr) == 0 {
					t.Fatalf("%s: %q is %T, want a non-empty array", tc.file, key, m[key])
				}
				// Optional keys differ between elements: compare their union.
				union := map[string]any{}
				for i, e := range arr {
					em, ok := e.(map[string]any)
					if !ok {
						t.Fatalf("%s: %s[%d] is %T, not a map", tc.file, key, i, e)
					}
					for k, v := range em {
						union[k] = v
					}
					for _, dk := range recs[rec] {
						if v, ok := em[dk.name]; ok && !checkType(dk.typ, v) {
							t.Errorf("%s: %s[%d].%s holds %T, documented %q", tc.file, key, i, dk.name, v, dk.typ)
						}
						if _, ok := em[dk.name]; !ok && dk.presence == "required" {
							t.Errorf("%s: %s[%d] lacks required key %q", tc.file, key, i, dk.name)
						}
					}
				}
				if d := diffKeys(mapKeys(union), keyNames(recs[rec])); d != "" {
					t.Errorf("%s: keys of %s elements differ from %s record %q:%s", tc.file, key, schemaDoc, rec, d)
				}
			}
		})
	}
}

// msgpackKeys lists the msgpack keys of a struct type, following inlined
// structs, with whether each is omitted when empty.
func msgpackKeys(typ reflect.Type) map[string]bool {
	out := map[string]bool{}
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		tag := f.Tag.Get("msgpack")
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			for k, o := range msgpackKeys(f.Type) {
				out[k] = o
			}
			continue
		}
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = strings.Contains(","+opts+",", ",omitempty,")
	}
	return out
}

// TestTypesDocumented checks the Go types themselves against docs/wire.md, so
// that a new field is caught even where the samples leave it empty, and that
// a key is documented optional exactly when it is omitted when empty.
func TestTypesDocumented(t *testing.T) {
	recs := docRecords(t)
	for _, tt := range []struct {
		name string
		typ  reflect.Type
		recs []string
	}{
		{"Worker", reflect.TypeFor[Worker](), []string{"common", "worker"}},
		{"Hive", reflect.TypeFor[Hive](), []string{"common", "hive"}},
		{"GPU", reflect.TypeFor[GPU](), []string{"gpu"}},
		{"HiveWorker", reflect.TypeFor[HiveWorker](), []string{"hive_worker"}},
		{"WorkerEntry", reflect.TypeFor[WorkerEntry](), []string{"common", "worker", "entry"}},
		{"HiveEntry", reflect.TypeFor[HiveEntry](), []string{"common", "hive", "entry"}},
		{"Queen", reflect.TypeFor[Queen](), []string{"common", "queen"}},
		{"QueenEntry", reflect.TypeFor[QueenEntry](), []string{"common", "queen", "entry"}},
		{"Event", reflect.TypeFor[Event](), []string{"event"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			keys := msgpackKeys(tt.typ)
			var doc []docKey
			for _, r := range tt.recs {
				doc = append(doc, recs[r]...)
			}
			if d := diffKeys(mapKeys(keys), keyNames(doc)); d != "" {
				t.Errorf("%s keys differ from %s:%s", tt.name, schemaDoc, d)
			}
			for _, k := range doc {
				omit, ok := keys[k.name]
				if !ok {
					continue
				}
				switch k.presence {
				case "required", "optional":
				default:
					t.Errorf("%s: key %q has presence %q, want required or optional", schemaDoc, k.name, k.presence)
					continue
				}
				if omit != (k.presence == "optional") {
					t.Errorf("%s.%s: omitted when empty = %v, but %s says %s", tt.name, k.name, omit, schemaDoc, k.presence)
				}
			}
		})
	}
}

// TestDocExamples checks that each JSON example in docs/wire.md, introduced
// by "<!-- wire:example FILE -->", shows what its fixture decodes to.
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile(schemaDoc)
	if err != nil {
		t.Fatal(err)
	}
	const marker = "<!-- wire:example "
	rest := string(doc)
	n := 0
	for {
		i := strings.Index(rest, marker)
		if i < 0 {
			break
		}
		rest = rest[i+len(marker):]
		file, after, ok := strings.Cut(rest, "-->")
		if !ok {
			t.Fatalf("%s: unterminated example marker", schemaDoc)
		}
		file = strings.TrimSpace(file)
		start := strings.Index(after, "```json\n")
		if start < 0 {
			t.Fatalf("%s: example %s has no ```json block", schemaDoc, file)
		}
		body := after[start+len("```json\n"):]
		end := strings.Index(body, "```")
		if end < 0 {
			t.Fatalf("%s: example %s is not closed", schemaDoc, file)
		}
		n++
		t.Run(file, func(t *testing.T) {
			b, err := os.ReadFile(goldenPath(file))
			if err != nil {
				t.Fatal(err)
			}
			v, err := DecodeAny(b)
			if err != nil {
				t.Fatal(err)
			}
			js, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			got, want := jsonValue(t, js), jsonValue(t, []byte(body[:end]))
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s: the example for %s is not what the fixture decodes to; it decodes to\n%s", schemaDoc, file, js)
			}
		})
		rest = body[end:]
	}
	if n == 0 {
		t.Fatalf("%s has no examples", schemaDoc)
	}
}

func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
	return v
}
