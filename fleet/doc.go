// Package fleet describes the fleet the registry holds, for operators.
//
// A Collector is a prometheus.Collector in the manner of kube-state-metrics:
// it computes its gauges at scrape time from the queen's registry mirror, so
// beats cost nothing extra. It exports workers by hive, model, status and
// liveness, a per-model summary (ready, busy, problem, other), per-GPU VRAM,
// utilisation, temperature, power, health and last XID, per-hive CPU, RAM,
// stats age, health and liveness, the queens' states, and rbee_build_info.
// Every family is bounded by a cap in Config; label sets beyond a cap are
// left out of the scrape and counted in rbee_fleet_series_cut{family}.
//
// The package also holds the judgements the operator's views share: Problem
// (an entry an operator must look at), ModelState, and NaturalLess (sim-2
// before sim-10).
package fleet
