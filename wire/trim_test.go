package wire

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestTrimWorkers: a view of any size becomes a beat that decodes and
// validates, carrying the first workers by ID and the count of the rest.
func TestTrimWorkers(t *testing.T) {
	small := func(i int) HiveWorker {
		return HiveWorker{WorkerID: fmt.Sprintf("w%05d", i), Status: StatusReady, Health: Healthy, ModelID: "m", Device: "cpu"}
	}
	// The largest worker the schema allows: long texts and 64 GPU UUIDs.
	large := func(i int) HiveWorker {
		w := small(i)
		w.WorkerID = fmt.Sprintf("%s%05d", strings.Repeat("x", 59), i)
		w.ModelID, w.Device = strings.Repeat("m", MaxTextLen), strings.Repeat("d", MaxTextLen)
		w.PID, w.VRAMUsedBytes = 1<<30, new(uint64)
		for g := range MaxGPUs {
			w.GPUUUIDs = append(w.GPUUUIDs, fmt.Sprintf("GPU-%s-%02d", strings.Repeat("u", MaxTextLen-7), g))
		}
		return w
	}
	for _, tt := range []struct {
		name     string
		n        int
		worker   func(int) HiveWorker
		wantKept int // -1: whatever fits the payload, fewer than n
	}{
		{"empty", 0, small, 0},
		{"at the limit", MaxHiveWorkers, small, MaxHiveWorkers},
		{"one over", MaxHiveWorkers + 1, small, MaxHiveWorkers},
		{"5000 workers", 5000, small, MaxHiveWorkers},
		{"large workers past the payload", 300, large, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := Hive{Meta: Meta{V: 1, InstanceID: "i", Seq: 1, IntervalMs: 1000, Health: Healthy},
				HiveID: "h", Hostname: "h", Version: "1", GPUs: []GPU{}, Workers: []HiveWorker{}}
			for i := tt.n - 1; i >= 0; i-- { // reverse order: TrimWorkers sorts
				h.Workers = append(h.Workers, tt.worker(i))
			}
			omitted := TrimWorkers(&h)
			kept := len(h.Workers)
			if tt.wantKept >= 0 && kept != tt.wantKept || tt.wantKept < 0 && (kept == 0 || kept >= tt.n) {
				t.Fatalf("kept %d of %d, want %d", kept, tt.n, tt.wantKept)
			}
			if omitted != tt.n-kept || h.WorkersOmitted != omitted {
				t.Fatalf("omitted %d, WorkersOmitted %d, want %d", omitted, h.WorkersOmitted, tt.n-kept)
			}
			for i, w := range h.Workers {
				if w.WorkerID != tt.worker(i).WorkerID {
					t.Fatalf("workers[%d] is %s, want the first by ID %s", i, w.WorkerID, tt.worker(i).WorkerID)
				}
			}
			data, err := Marshal(&h)
			if err != nil {
				t.Fatal(err)
			}
			if len(data) > MaxPayload {
				t.Fatalf("payload %d bytes, over %d", len(data), MaxPayload)
			}
			dec, err := DecodeHive(data)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if err := dec.Validate(); err != nil {
				t.Fatalf("validate: %v", err)
			}
			if dec.WorkersOmitted != omitted || !slices.EqualFunc(dec.Workers, h.Workers, func(a, b HiveWorker) bool { return a.WorkerID == b.WorkerID }) {
				t.Fatalf("decoded %d workers, %d omitted; sent %d, %d", len(dec.Workers), dec.WorkersOmitted, kept, omitted)
			}
		})
	}
}

// TestWorkersOmittedInvalid: a negative count, or one past 2^53, is refused.
func TestWorkersOmittedInvalid(t *testing.T) {
	for _, n := range []int{-1, MaxSeq + 1} {
		h := Hive{Meta: Meta{V: 1, InstanceID: "i", Seq: 1, IntervalMs: 1000, Health: Healthy},
			HiveID: "h", Hostname: "h", Version: "1", GPUs: []GPU{}, Workers: []HiveWorker{}, WorkersOmitted: n}
		if err := h.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("workers_omitted %d: %v, want ErrInvalid", n, err)
		}
	}
}
