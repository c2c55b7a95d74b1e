package wire

import (
	"errors"
	"math"
	"testing"
)

func TestSkewMs(t *testing.T) {
	for _, tt := range []struct {
		recv, sent, want int64
	}{
		{1000, 990, 10},
		{990, 1000, -10},
		{1767225600000, 0, 1767225600000},
		{0, math.MinInt64, MaxTimeMs},
		{0, math.MaxInt64, -MaxTimeMs},
		{math.MaxInt64, math.MinInt64, MaxTimeMs},
		{math.MinInt64, math.MaxInt64, -MaxTimeMs},
		{math.MinInt64, 1, -MaxTimeMs},
		{1767225600000, -(1 << 62), MaxTimeMs},
		{-5, -7, 2},
	} {
		if got := SkewMs(tt.recv, tt.sent); got != tt.want {
			t.Errorf("SkewMs(%d, %d) = %d, want %d", tt.recv, tt.sent, got, tt.want)
		}
	}
}

// TestProgressClamped: an engine counter past 2^53 keeps the worker valid,
// read as 2^53.
func TestProgressClamped(t *testing.T) {
	w := sampleWorker()
	w.Progress = ptr[uint64](math.MaxUint64)
	if err := w.Validate(); err != nil {
		t.Fatalf("progress past 2^53 refused: %v", err)
	}
	if *w.Progress != MaxSeq {
		t.Fatalf("progress %d, want 2^53", *w.Progress)
	}
}

func TestValidateNewKeys(t *testing.T) {
	tests := []struct {
		name string
		err  func() error
	}{
		{"sent_at_ms negative", func() error { w := sampleWorker(); w.SentAtMs = -1; return w.Validate() }},
		{"sent_at_ms past 2^53", func() error { w := sampleWorker(); w.SentAtMs = MaxTimeMs + 1; return w.Validate() }},
		{"sent_at_ms min int64", func() error { w := sampleWorker(); w.SentAtMs = math.MinInt64; return w.Validate() }},
		{"requests_waiting negative", func() error { w := sampleWorker(); w.RequestsWaiting = ptr(-1); return w.Validate() }},
		{"pid negative", func() error { w := sampleWorker(); w.PID = -2; return w.Validate() }},
		{"engine_age_ms negative", func() error { w := sampleWorker(); w.EngineAgeMs = -1; return w.Validate() }},
		{"kv_cache_percent above 100", func() error { w := sampleWorker(); w.KVCachePercent = ptr(100.5); return w.Validate() }},
		{"kv_cache_percent negative", func() error { w := sampleWorker(); w.KVCachePercent = ptr(-0.1); return w.Validate() }},
		{"kv_cache_percent NaN", func() error { w := sampleWorker(); w.KVCachePercent = ptr(math.NaN()); return w.Validate() }},
		{"conn too long", func() error { w := sampleWorker(); w.Conn = string(make([]byte, MaxTextLen+1)); return w.Validate() }},
		{"xid negative", func() error { h := sampleHive(); h.GPUs[0].Xid = ptr(-1); return h.Validate() }},
		{"recovery_action unknown", func() error { h := sampleHive(); h.GPUs[0].RecoveryAction = "pray"; return h.Validate() }},
		{"hive worker pid negative", func() error { h := sampleHive(); h.Workers[0].PID = -1; return h.Validate() }},
		{"hive worker too many gpu_uuids", func() error {
			h := sampleHive()
			h.Workers[0].GPUUUIDs = make([]string, MaxGPUs+1)
			return h.Validate()
		}},
		{"queen state unknown", func() error { q := goldenQueen(); q.State = "fine"; return q.Validate() }},
		{"queen id invalid", func() error { q := goldenQueen(); q.QueenID = "a.b"; return q.Validate() }},
		{"queen id empty", func() error { q := goldenQueen(); q.QueenID = ""; return q.Validate() }},
		{"queen backlog negative", func() error { q := goldenQueen(); q.Backlog = -1; return q.Validate() }},
		{"queen sent_at_ms negative", func() error { q := goldenQueen(); q.SentAtMs = -1; return q.Validate() }},
		{"liveness unknown", func() error { r := Received{Liveness: "zombie"}; return r.Validate() }},
		{"event liveness unknown", func() error { e := goldenEvent(); e.Liveness = "zombie"; return e.Validate() }},
		{"event without hive", func() error { e := goldenEvent(); e.HiveID = ""; return e.Validate() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.err(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	// The samples themselves are valid, every enum value is.
	for _, a := range append(RecoveryActions, "") {
		h := sampleHive()
		h.GPUs[0].RecoveryAction = a
		if err := h.Validate(); err != nil {
			t.Errorf("recovery_action %q: %v", a, err)
		}
	}
	for _, s := range []QueenState{QueenOK, QueenDegraded, QueenDisrupted} {
		q := goldenQueen()
		q.State = s
		if err := q.Validate(); err != nil {
			t.Errorf("state %q: %v", s, err)
		}
	}
	for _, l := range []Liveness{"", LivenessAlive, LivenessDisconnected, LivenessStalled} {
		r := goldenWorkerEntry().Received
		r.Liveness = l
		if err := r.Validate(); err != nil {
			t.Errorf("liveness %q: %v", l, err)
		}
	}
	e := goldenEvent()
	if err := e.Validate(); err != nil {
		t.Errorf("event: %v", err)
	}
}
