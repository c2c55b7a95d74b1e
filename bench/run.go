package main

import (
	"encoding/json"
	"log"
	"os"
	"strings"
	"time"
)

// results is everything one run measured.
type results struct {
	started  time.Time
	Date     string         `json:"date"`
	Command  string         `json:"command"`
	Machine  machine        `json:"machine"`
	WallTime string         `json:"wall_time"`
	Settings settings       `json:"settings"`
	Wire     []microResult  `json:"wire_benchmarks,omitempty"`
	Sizes    *sizeResult    `json:"payload_size,omitempty"`
	Ingest   []ingestResult `json:"ingest,omitempty"`
	Latency  *latencyResult `json:"detection,omitempty"`
	Memory   *memoryResult  `json:"memory_cpu,omitempty"`
	Profile  *profileResult `json:"profile,omitempty"`
}

// settings are the knobs the run used.
type settings struct {
	Sizes       []int  `json:"fleet_sizes"`
	Trials      int    `json:"trials"`
	Beats       int    `json:"beats_per_trial"`
	Window      uint64 `json:"generator_window"`
	HTTPSenders int    `json:"http_senders"`
	HTTPBeats   int    `json:"http_beats_per_trial"`
	ChildBroker bool   `json:"ingest_broker_in_child_process"`
}

func runAll(o options) (*results, error) {
	res := &results{
		Settings: settings{Sizes: o.sizes, Trials: o.trials, Beats: o.beats, Window: o.window,
			HTTPSenders: o.httpSenders, HTTPBeats: o.httpBeats, ChildBroker: o.childBroker},
		started: time.Now(),
		Date:    time.Now().UTC().Format("2006-01-02 15:04 MST"),
		Command: "go run ./bench " + strings.Join(os.Args[1:], " "),
		Machine: describeMachine(),
	}
	log.Printf("machine: %d CPUs, %s, %s, %s", res.Machine.NProc, res.Machine.CPUModel, res.Machine.RAM, res.Machine.GoVersion)
	if o.run("wire") {
		log.Print("wire encode/decode benchmarks")
		res.Wire = microBenchmarks()
	}
	if o.run("size") {
		s, err := measureSizes()
		if err != nil {
			return nil, err
		}
		res.Sizes = &s
	}
	if o.run("ingest") {
		for _, n := range o.sizes {
			r, err := measureIngest(o, n)
			if err != nil {
				return nil, err
			}
			res.Ingest = append(res.Ingest, r)
		}
	}
	if o.run("latency") {
		l, err := measureLatency(o)
		if err != nil {
			return nil, err
		}
		res.Latency = &l
	}
	if o.run("memory") {
		m, p, err := measureMemory(o)
		if err != nil {
			return nil, err
		}
		res.Memory, res.Profile = &m, p
	}
	res.WallTime = time.Since(res.started).Round(time.Second).String()
	return res, nil
}

func writeJSON(path string, res *results) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
