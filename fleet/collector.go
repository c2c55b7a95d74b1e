package fleet

import (
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/wire"
)

// Source is the registry the Collector reads: the queen's mirror
// (*registry.Watcher). Its methods may be called concurrently; the entries
// it returns are not modified. Workers may return them in any order.
type Source interface {
	Workers() []*wire.WorkerEntry
	Hives() []*wire.HiveEntry
	Queens() []*wire.QueenEntry
}

var (
	descBuild = prometheus.NewDesc("rbee_build_info",
		"Always 1; the labels name the running build.", []string{"version", "revision", "goversion"}, nil)
	descWorkers = prometheus.NewDesc("rbee_workers",
		"Worker entries in the registry by hive, model, status and liveness.", []string{"hive", "model", "status", "liveness"}, nil)
	descModel = prometheus.NewDesc("rbee_model_workers",
		"Workers of each model by state: ready or busy (alive, not unhealthy), problem (not alive or unhealthy), "+
			"other (starting, draining, stopping, stopped). Every state of every model in the registry is exported, zeros included.",
		[]string{"model", "state"}, nil)
	descHiveCPU      = prometheus.NewDesc("rbee_hive_cpu_percent", "The hive machine's CPU use, percent of all cores.", []string{"hive"}, nil)
	descHiveRAMUsed  = prometheus.NewDesc("rbee_hive_ram_used_bytes", "The hive machine's RAM in use.", []string{"hive"}, nil)
	descHiveRAMTotal = prometheus.NewDesc("rbee_hive_ram_total_bytes", "The hive machine's RAM.", []string{"hive"}, nil)
	descHiveStale    = prometheus.NewDesc("rbee_hive_stats_stale",
		"1 when the hive's last beat reused an old system or GPU sample (the sampler could not refresh in time).", []string{"hive"}, nil)
	descHiveStatsAge = prometheus.NewDesc("rbee_hive_stats_age_seconds", "Age of the hive's stats sample when it was sent.", []string{"hive"}, nil)
	descHiveBeatAge  = prometheus.NewDesc("rbee_hive_last_beat_age_seconds",
		"Time since the queen accepted the hive's last beat (queen clock).", []string{"hive"}, nil)
	descHiveHealth   = prometheus.NewDesc("rbee_hive_health", "1 for the hive's own health judgement.", []string{"hive", "health"}, nil)
	descHiveLiveness = prometheus.NewDesc("rbee_hive_liveness", "1 for the queen's liveness judgement of the hive.", []string{"hive", "liveness"}, nil)
	descHiveGPUs     = prometheus.NewDesc("rbee_hive_gpus", "GPUs the hive reports.", []string{"hive"}, nil)

	gpuLabels        = []string{"hive", "gpu"}
	descGPUInfo      = prometheus.NewDesc("rbee_gpu_info", "Always 1; names each GPU (gpu is its index on the hive).", []string{"hive", "gpu", "uuid", "name"}, nil)
	descGPUVRAMUsed  = prometheus.NewDesc("rbee_gpu_vram_used_bytes", "GPU memory in use.", gpuLabels, nil)
	descGPUVRAMTotal = prometheus.NewDesc("rbee_gpu_vram_total_bytes", "GPU memory.", gpuLabels, nil)
	descGPUUtil      = prometheus.NewDesc("rbee_gpu_utilization_percent", "GPU utilisation, percent.", gpuLabels, nil)
	descGPUTemp      = prometheus.NewDesc("rbee_gpu_temperature_celsius", "GPU temperature.", gpuLabels, nil)
	descGPUPower     = prometheus.NewDesc("rbee_gpu_power_watts", "GPU power draw.", gpuLabels, nil)
	descGPUHealth    = prometheus.NewDesc("rbee_gpu_health",
		"1 for the GPU's health (healthy when the hive reports none).", []string{"hive", "gpu", "health"}, nil)
	descGPUXid   = prometheus.NewDesc("rbee_gpu_last_xid", "The last NVIDIA Xid error of the GPU; absent when none was seen.", gpuLabels, nil)
	descGPUXidAt = prometheus.NewDesc("rbee_gpu_last_xid_timestamp_seconds", "When the last Xid was seen (hive clock).", gpuLabels, nil)
	descGPURecov = prometheus.NewDesc("rbee_gpu_recovery_action",
		"1 for the driver's recommended recovery action (none, gpu_reset, node_reboot, drain_p2p, drain_and_reset).",
		[]string{"hive", "gpu", "action"}, nil)

	descQueens = prometheus.NewDesc("rbee_queen_peers",
		"1 for each queen in the queens bucket and its state (ok, degraded, disrupted); an expired queen is gone.",
		[]string{"queen", "state"}, nil)
	descCut = prometheus.NewDesc("rbee_fleet_series_cut",
		"Label sets left out of this scrape because a family passed its cap (docs/metrics.md, Cardinality).", []string{"family"}, nil)
	descEntries = prometheus.NewDesc("rbee_fleet_scrape_entries", "Registry entries the fleet collector read in this scrape.", []string{"kind"}, nil)
)

// cutFamilies are the rbee_fleet_series_cut label values, always exported.
var cutFamilies = []string{"workers", "model", "hive", "gpu", "queen"}

// Collector exports the fleet from a Source at scrape time. It may be
// registered once per registry and collected concurrently.
type Collector struct {
	src      func() Source
	cfg      Config
	revision string
	now      func() time.Time
}

// New returns a Collector reading src at every scrape; src returns nil while
// no registry is loaded (the families are then empty, rbee_build_info is
// still exported). It returns an error wrapping ErrInvalidConfig.
func New(src func() Source, cfg Config) (*Collector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rev := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				rev = s.Value
			}
		}
	}
	return &Collector{src: src, cfg: cfg, revision: rev, now: time.Now}, nil
}

// Describe sends every family's descriptor.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descWorkers, descModel, descHiveCPU, descHiveRAMUsed, descHiveRAMTotal,
		descHiveStale, descHiveStatsAge, descHiveBeatAge, descHiveHealth, descHiveLiveness, descHiveGPUs,
		descGPUInfo, descGPUVRAMUsed, descGPUVRAMTotal, descGPUUtil, descGPUTemp, descGPUPower, descGPUHealth,
		descGPUXid, descGPUXidAt, descGPURecov, descQueens, descCut, descEntries} {
		ch <- d
	}
}

// Collect computes the families from the Source's current entries.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, c.cfg.Version, c.revision, runtime.Version())
	cut := map[string]int{}
	defer func() {
		for _, f := range cutFamilies {
			ch <- prometheus.MustNewConstMetric(descCut, prometheus.GaugeValue, float64(cut[f]), f)
		}
	}()
	var src Source
	if c.src != nil {
		src = c.src()
	}
	if src == nil {
		return
	}
	workers, hives, queens := src.Workers(), src.Hives(), src.Queens()
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(len(workers)), "worker")
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(len(hives)), "hive")
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(len(queens)), "queen")
	c.collectWorkers(ch, workers, cut)
	c.collectHives(ch, hives, cut)
	c.collectQueens(ch, queens, cut)
}

type workerSet struct{ hive, model, status, liveness string }

func (c *Collector) collectWorkers(ch chan<- prometheus.Metric, workers []*wire.WorkerEntry, cut map[string]int) {
	sets := map[workerSet]int{}
	models := map[string]*[4]int{}
	for _, w := range workers {
		sets[workerSet{w.HiveID, w.ModelID, string(w.Status), string(w.Liveness.OrAlive())}]++
		m := models[w.ModelID]
		if m == nil {
			m = &[4]int{}
			models[w.ModelID] = m
		}
		m[slices.Index(ModelStates, StateOf(w))]++
	}
	keys := make([]workerSet, 0, len(sets))
	for k := range sets {
		keys = append(keys, k)
	}
	// A cut keeps the same label sets from scrape to scrape: sorted, first kept.
	slices.SortFunc(keys, func(a, b workerSet) int {
		for _, p := range [][2]string{{a.hive, b.hive}, {a.model, b.model}, {a.status, b.status}, {a.liveness, b.liveness}} {
			if p[0] != p[1] {
				if p[0] < p[1] {
					return -1
				}
				return 1
			}
		}
		return 0
	})
	if len(keys) > c.cfg.MaxWorkerSets {
		cut["workers"] = len(keys) - c.cfg.MaxWorkerSets
		keys = keys[:c.cfg.MaxWorkerSets]
	}
	for _, k := range keys {
		ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(sets[k]), k.hive, k.model, k.status, k.liveness)
	}
	names := make([]string, 0, len(models))
	for m := range models {
		names = append(names, m)
	}
	slices.Sort(names)
	if len(names) > c.cfg.MaxModels {
		cut["model"] = len(names) - c.cfg.MaxModels
		names = names[:c.cfg.MaxModels]
	}
	for _, m := range names {
		for i, s := range ModelStates {
			ch <- prometheus.MustNewConstMetric(descModel, prometheus.GaugeValue, float64(models[m][i]), m, string(s))
		}
	}
}

func (c *Collector) collectHives(ch chan<- prometheus.Metric, hives []*wire.HiveEntry, cut map[string]int) {
	if len(hives) > c.cfg.MaxHives {
		cut["hive"] = len(hives) - c.cfg.MaxHives
		hives = hives[:c.cfg.MaxHives] // sorted by ID
	}
	now := c.now()
	gpus := 0
	for _, h := range hives {
		id := h.HiveID
		gauge := func(d *prometheus.Desc, v float64, lv ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{id}, lv...)...)
		}
		gauge(descHiveCPU, h.CPUPercent)
		gauge(descHiveRAMUsed, float64(h.RAMUsedBytes))
		gauge(descHiveRAMTotal, float64(h.RAMTotalBytes))
		gauge(descHiveStale, b2f(h.StatsStale))
		gauge(descHiveStatsAge, float64(h.StatsAgeMs)/1000)
		gauge(descHiveBeatAge, max(0, now.Sub(time.UnixMilli(h.ReceivedAtMs)).Seconds()))
		gauge(descHiveHealth, 1, string(orHealthy(h.Health)))
		gauge(descHiveLiveness, 1, string(h.Liveness.OrAlive()))
		gauge(descHiveGPUs, float64(len(h.GPUs)))
		for i := range h.GPUs {
			if gpus >= c.cfg.MaxGPUs {
				cut["gpu"]++
				continue
			}
			gpus++
			collectGPU(ch, id, &h.GPUs[i])
		}
	}
}

func collectGPU(ch chan<- prometheus.Metric, hive string, g *wire.GPU) {
	idx := strconv.Itoa(g.Index)
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{hive, idx}, lv...)...)
	}
	gauge(descGPUInfo, 1, g.UUID, g.Name)
	// Measurements the device did not report stay absent, never a made-up zero.
	if g.VRAMUsedBytes != nil {
		gauge(descGPUVRAMUsed, float64(*g.VRAMUsedBytes))
	}
	if g.VRAMTotalBytes != nil {
		gauge(descGPUVRAMTotal, float64(*g.VRAMTotalBytes))
	}
	if g.UtilPercent != nil {
		gauge(descGPUUtil, *g.UtilPercent)
	}
	if g.TemperatureC != nil {
		gauge(descGPUTemp, *g.TemperatureC)
	}
	if g.PowerW != nil {
		gauge(descGPUPower, *g.PowerW)
	}
	gauge(descGPUHealth, 1, string(orHealthy(g.Health)))
	if g.Xid != nil {
		gauge(descGPUXid, float64(*g.Xid))
		if g.XidAtMs > 0 {
			gauge(descGPUXidAt, float64(g.XidAtMs)/1000)
		}
	}
	action := g.RecoveryAction
	if action == "" {
		action = "none"
	}
	gauge(descGPURecov, 1, action)
}

func (c *Collector) collectQueens(ch chan<- prometheus.Metric, queens []*wire.QueenEntry, cut map[string]int) {
	if len(queens) > c.cfg.MaxQueens {
		cut["queen"] = len(queens) - c.cfg.MaxQueens
		queens = queens[:c.cfg.MaxQueens]
	}
	for _, q := range queens {
		st := q.State
		if !st.Valid() {
			st = wire.QueenDegraded
		}
		ch <- prometheus.MustNewConstMetric(descQueens, prometheus.GaugeValue, 1, q.QueenID, string(st))
	}
}

func orHealthy(h wire.Health) wire.Health {
	if h == "" {
		return wire.Healthy
	}
	return h
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
