package subjects

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{"simple", "gpu-node-1", true},
		{"underscore", "w_0", true},
		{"max length", strings.Repeat("a", 64), true},
		{"too long", strings.Repeat("a", 65), false},
		{"empty", "", false},
		{"dot", "a.b", false},
		{"wildcard star", "*", false},
		{"wildcard gt", ">", false},
		{"space", "a b", false},
		{"unicode", "wörker", false},
		{"slash", "a/b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateID("worker id", tt.id)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidID) {
				t.Fatalf("error %v does not wrap ErrInvalidID", err)
			}
			if ValidID(tt.id) != tt.ok {
				t.Fatalf("ValidID(%q) != %v", tt.id, tt.ok)
			}
		})
	}
}

func TestNewPrefix(t *testing.T) {
	for _, p := range []string{"", "a.b", "rbee>", strings.Repeat("p", 33)} {
		if _, err := New(p); !errors.Is(err, ErrInvalidPrefix) {
			t.Errorf("New(%q) = %v, want ErrInvalidPrefix", p, err)
		}
	}
	s, err := New("prod-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.WorkersBucket(); got != "prod-1_workers" {
		t.Errorf("WorkersBucket = %q", got)
	}
}

func TestParse(t *testing.T) {
	s := Default()
	tests := []struct {
		name    string
		subject string
		want    Address
		wantErr error
	}{
		{"worker", "rbee.hb.worker.h1.w1", Address{Kind: KindWorker, HiveID: "h1", WorkerID: "w1"}, nil},
		{"hive", "rbee.hb.hive.h1", Address{Kind: KindHive, HiveID: "h1"}, nil},
		{"queen", "rbee.hb.queen.q-1", Address{Kind: KindQueen, QueenID: "q-1"}, nil},
		{"other prefix", "other.hb.hive.h1", Address{}, ErrNotHeartbeat},
		{"worker missing id", "rbee.hb.worker.h1", Address{}, ErrNotHeartbeat},
		{"hive extra token", "rbee.hb.hive.h1.x", Address{}, ErrNotHeartbeat},
		{"unknown kind", "rbee.hb.king.q1", Address{}, ErrNotHeartbeat},
		{"invalid hive id", "rbee.hb.hive.h$", Address{}, ErrInvalidID},
		{"invalid worker id", "rbee.hb.worker.h1." + strings.Repeat("w", 65), Address{}, ErrInvalidID},
		{"empty token", "rbee.hb.worker..w1", Address{}, ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Parse(tt.subject)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Parse(%q) err = %v, want %v", tt.subject, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", tt.subject, got, err, tt.want)
			}
		})
	}
}

func TestBuildParseRoundTrip(t *testing.T) {
	s, _ := New("x")
	a, err := s.Parse(s.Worker("hive_1", "w-2"))
	if err != nil || a != (Address{Kind: KindWorker, HiveID: "hive_1", WorkerID: "w-2"}) {
		t.Fatalf("round trip worker: %+v %v", a, err)
	}
	a, err = s.Parse(s.Hive("hive_1"))
	if err != nil || a != (Address{Kind: KindHive, HiveID: "hive_1"}) {
		t.Fatalf("round trip hive: %+v %v", a, err)
	}
}

func TestWorkerKey(t *testing.T) {
	h, w, err := ParseWorkerKey(WorkerKey("h1", "w1"))
	if err != nil || h != "h1" || w != "w1" {
		t.Fatalf("ParseWorkerKey = %q %q %v", h, w, err)
	}
	for _, k := range []string{"h1", "h1.", ".w1", "h1.w1.x", "h$.w1"} {
		if _, _, err := ParseWorkerKey(k); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParseWorkerKey(%q) = %v, want ErrInvalidKey", k, err)
		}
	}
}
