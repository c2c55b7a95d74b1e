// Command bench measures rbee-heartbeat on the machine it runs on and writes
// BENCHMARKS.md and a JSON record of the run.
//
// It starts everything it needs itself on loopback (embedded nats-server with
// a temporary store, the queen, a load generator, an HTTP server for the
// seed design) and measures:
//
//   - queen ingest throughput (accepted, validated and persisted to KV, with
//     nothing lost) beside the bus limit (core NATS), the store limit (async
//     KV publishes), a decode-free relay, and the HTTP/JSON seed design;
//   - detection latency: crash → expired and goodbye → left;
//   - payload size in msgpack and JSON;
//   - queen memory per registered worker and CPU per 100k beats (broker in a
//     child process so that the queen's process holds the queen alone);
//   - wire encode/decode cost.
//
// Usage:
//
//	go run ./bench [-cpuprofile bench/cpu.prof] [-md BENCHMARKS.md] [-json bench/results.json]
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// options are the run's knobs.
type options struct {
	sizes       []int
	trials      int
	beats       int // beats per timed trial (rounded to whole rounds of the fleet)
	window      uint64
	httpSenders int
	httpBeats   int
	memWorkers  int
	latWorkers  int
	cpuProfile  string
	memProfile  string
	childBroker bool
	md, json    string
	only        map[string]bool
}

func (o options) run(phase string) bool { return len(o.only) == 0 || o.only[phase] }

func main() {
	var (
		o     options
		sizes string
		only  string
		child string
	)
	flag.StringVar(&sizes, "sizes", "10000,100000", "fleet sizes (distinct workers) for the ingest runs")
	flag.IntVar(&o.trials, "trials", 5, "timed trials per system and size (the median is reported)")
	flag.IntVar(&o.beats, "beats", 300000, "beats per timed trial")
	flag.Uint64Var(&o.window, "window", 16384, "most beats the generator has sent and the system has not yet handled")
	flag.IntVar(&o.httpSenders, "http-senders", 4, "concurrent keep-alive senders for the HTTP/JSON design")
	flag.IntVar(&o.httpBeats, "http-beats", 60000, "beats per timed HTTP trial")
	flag.IntVar(&o.memWorkers, "mem-workers", 100000, "registered workers for the memory and CPU phase")
	flag.IntVar(&o.latWorkers, "lat-workers", 1000, "workers for the detection-latency phase (half crash, half leave)")
	flag.BoolVar(&o.childBroker, "child-broker", false, "run the ingest phase's broker in a child process (default: in-process, as rbee queen runs it)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the queen's process under load to this file")
	flag.StringVar(&o.memProfile, "memprofile", "", "with -cpuprofile: write the allocation profile of the queen's process to this file")
	flag.StringVar(&o.md, "md", "BENCHMARKS.md", "markdown report to write (empty: none)")
	flag.StringVar(&o.json, "json", "bench/results.json", "JSON results to write (empty: none)")
	flag.StringVar(&only, "only", "", "comma-separated phases to run: wire,size,ingest,latency,memory (default all)")
	flag.StringVar(&child, "broker-child", "", "internal: serve a broker storing in this directory until stdin closes")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if child != "" {
		if err := serveChildBroker(child); err != nil {
			log.Fatal(err)
		}
		return
	}
	for s := range strings.SplitSeq(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			log.Fatalf("bad -sizes %q", sizes)
		}
		o.sizes = append(o.sizes, n)
	}
	if only != "" {
		o.only = map[string]bool{}
		for p := range strings.SplitSeq(only, ",") {
			if !slices.Contains([]string{"wire", "size", "ingest", "latency", "memory"}, p) {
				log.Fatalf("unknown phase %q", p)
			}
			o.only[p] = true
		}
	}
	res, err := runAll(o)
	if err != nil {
		log.Fatal(err)
	}
	if o.json != "" {
		if err := writeJSON(o.json, res); err != nil {
			log.Fatal(err)
		}
	}
	if o.md != "" {
		if err := os.WriteFile(o.md, []byte(markdown(res, keptNotes(o.md))), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Print(table(res))
	log.Printf("done in %s", time.Since(res.started).Round(time.Second))
}
