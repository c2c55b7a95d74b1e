package queen

import (
	"testing"
)

func TestVersionAtLeast(t *testing.T) {
	tests := []struct {
		v    string
		want bool
	}{
		{"2.11.0", true}, {"2.15.2", true}, {"v2.12.1-beta", true}, {"2.9.25", false}, {"2.10.99", false}, {"3.0.0", true},
	}
	for _, tt := range tests {
		t.Run(tt.v, func(t *testing.T) {
			if got := versionAtLeast(tt.v, MinServerVersion); got != tt.want {
				t.Fatalf("versionAtLeast(%q) = %v, want %v", tt.v, got, tt.want)
			}
		})
	}
	if err := CheckServerVersion("2.9.25"); err == nil {
		t.Fatal("2.9 accepted")
	}
}
