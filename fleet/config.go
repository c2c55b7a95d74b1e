package fleet

import "fmt"

// Config bounds what a Collector exports. Each cap limits the label sets of
// its families in one scrape; the rest are counted, not exported.
type Config struct {
	// Version is the rbee version in rbee_build_info.
	Version string
	// MaxHives caps the hives exported in the per-hive families.
	MaxHives int
	// MaxGPUs caps the GPUs exported in the per-GPU families (hive × index).
	MaxGPUs int
	// MaxModels caps the models in rbee_model_workers.
	MaxModels int
	// MaxWorkerSets caps the (hive, model, status, liveness) label sets of rbee_workers.
	MaxWorkerSets int
	// MaxQueens caps the queens in rbee_queen_peers.
	MaxQueens int
}

// DefaultConfig returns the caps documented in docs/metrics.md: at most
// 70,985 series (MaxSeries), whatever the fleet's size.
func DefaultConfig(version string) Config {
	return Config{
		Version:       version,
		MaxHives:      2000,  // hives; × 9 per-hive series
		MaxGPUs:       4096,  // GPUs; × up to 10 per-GPU series
		MaxModels:     500,   // models; × 4 states
		MaxWorkerSets: 10000, // label sets of rbee_workers
		MaxQueens:     16,    // queens; × 3 states
	}
}

// Validate returns an error wrapping ErrInvalidConfig if a cap is below 1.
func (c Config) Validate() error {
	for _, v := range []struct {
		name string
		n    int
	}{{"MaxHives", c.MaxHives}, {"MaxGPUs", c.MaxGPUs}, {"MaxModels", c.MaxModels},
		{"MaxWorkerSets", c.MaxWorkerSets}, {"MaxQueens", c.MaxQueens}} {
		if v.n < 1 {
			return fmt.Errorf("%w: %s %d, want at least 1", ErrInvalidConfig, v.name, v.n)
		}
	}
	return nil
}

// MaxSeries returns the most series a Collector with c exports in one scrape:
// 9 per hive, 10 per GPU, one per worker label set, 4 per model, one per
// queen, and 9 fixed (build info, the cut counts, the entry counts).
func (c Config) MaxSeries() int {
	return 9*c.MaxHives + 10*c.MaxGPUs + c.MaxWorkerSets + len(ModelStates)*c.MaxModels + c.MaxQueens + 1 + len(cutFamilies) + 3
}
