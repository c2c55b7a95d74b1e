package fleet_test

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/fleet"
	"github.com/rbee/heartbeat/wire"
)

// BenchmarkCollect scrapes a fleet of 1,000 hives with 8 GPUs and 10
// workers each (10,000 workers, 20 models): the whole cost of the fleet
// families, paid per scrape, not per beat.
func BenchmarkCollect(b *testing.B) {
	src := &source{}
	for h := range 1000 {
		he := &wire.HiveEntry{}
		he.HiveID, he.Health = fmt.Sprintf("node-%d", h), wire.Healthy
		for g := range 8 {
			he.GPUs = append(he.GPUs, wire.GPU{Index: g, UUID: fmt.Sprintf("GPU-%d-%d", h, g), Name: "H100",
				VRAMUsedBytes: ptr[uint64](1 << 30), VRAMTotalBytes: ptr[uint64](80 << 30), UtilPercent: ptr(50.0),
				TemperatureC: ptr(60.0), PowerW: ptr(300.0)})
		}
		src.hives = append(src.hives, he)
		for w := range 10 {
			st := wire.StatusReady
			if w%2 == 0 {
				st = wire.StatusBusy
			}
			src.workers = append(src.workers, worker(he.HiveID, fmt.Sprint("w", w), fmt.Sprint("model-", (h+w)%20), st, "", wire.Healthy))
		}
	}
	c, err := fleet.New(func() fleet.Source { return src }, fleet.DefaultConfig("bench"))
	if err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	b.ReportAllocs()
	var series int
	for b.Loop() {
		mfs, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		series = 0
		for _, mf := range mfs {
			series += len(mf.GetMetric())
		}
	}
	b.ReportMetric(float64(series), "series")
}
