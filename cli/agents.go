package cli

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/rbee/heartbeat/hive"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
	"github.com/rbee/heartbeat/worker"
)

func runHive(e *env, args []string) error {
	var c common
	fs := newFlagSet(e, "hive")
	c.register(fs, DefaultURL)
	hiveID := fs.String("hive-id", "", "this hive's ID ([A-Za-z0-9_-]{1,64}, required)")
	interval := fs.Duration("interval", 30*time.Second, "heartbeat interval")
	workerTTL := fs.Duration("worker-ttl", 0, "drop a worker from the hive's view after this long without a beat (default 3 × interval)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if err := subjects.ValidateID("--hive-id", *hiveID); err != nil {
		return usageError{err.Error()}
	}
	log := c.logger(e)
	hc := hive.DefaultConfig(*hiveID)
	hc.Prefix, hc.Interval, hc.Version, hc.Logger = c.prefix, *interval, Version, log
	hc.WorkerTTL = *workerTTL
	if hc.WorkerTTL == 0 {
		hc.WorkerTTL = 3 * *interval
	}
	if err := hc.Validate(); err != nil {
		return usageError{err.Error()}
	}
	stats, err := startStats(e.ctx, *interval, log)
	if err != nil {
		return err
	}
	defer stats.Stop()
	hc.Stats = stats.Fill
	nc, err := c.connectWaiting(e.ctx, "rbee-hive-"+*hiveID, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	h, err := hive.New(nc, hc)
	if err != nil {
		return usageError{err.Error()}
	}
	if err := h.Start(e.ctx); err != nil {
		return err
	}
	log.Info("hive beating", "hive", *hiveID, "subject", c.scheme().Hive(*hiveID), "interval", *interval)
	<-e.ctx.Done()
	return stopGracefully(h.Stop)
}

func stopGracefully(stop func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return stop(ctx)
}

func runWorker(e *env, args []string) error {
	var c common
	fs := newFlagSet(e, "worker")
	c.register(fs, DefaultURL)
	hiveID := fs.String("hive-id", "", "the hive this worker runs on (required)")
	workerID := fs.String("worker-id", "", "this worker's ID (required); with --simulate, the prefix of the IDs")
	interval := fs.Duration("interval", 30*time.Second, "heartbeat interval")
	model := fs.String("model", "", "model the worker serves")
	device := fs.String("device", "cpu", "device the worker runs on, e.g. cuda:0")
	url := fs.String("url", "", "the worker's inference URL")
	slots := fs.Int("slots", 1, "concurrent request slots")
	simulate := fs.Int("simulate", 0, "run N simulated workers <worker-id>-0 … <worker-id>-(N-1) that change between ready and busy")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if err := subjects.ValidateID("--hive-id", *hiveID); err != nil {
		return usageError{err.Error()}
	}
	if err := subjects.ValidateID("--worker-id", *workerID); err != nil {
		return usageError{err.Error()}
	}
	if *simulate < 0 || *simulate > 100000 {
		return usagef("--simulate %d: want 0 to 100000", *simulate)
	}
	ids := []string{*workerID}
	if *simulate > 0 {
		ids = ids[:0]
		for i := range *simulate {
			ids = append(ids, *workerID+"-"+strconv.Itoa(i))
		}
	}
	log := c.logger(e)
	cfgs := make([]worker.Config, len(ids))
	for i, id := range ids {
		wc := worker.DefaultConfig(*hiveID, id)
		wc.Prefix, wc.Interval, wc.ModelID, wc.Device, wc.URL, wc.SlotsTotal, wc.Version = c.prefix, *interval, *model, *device, *url, *slots, Version
		if *simulate > 0 {
			wc.Device = fmt.Sprintf("cuda:%d", i%8)
		}
		if i == 0 {
			wc.Logger = log
		}
		if err := wc.Validate(); err != nil {
			return usageError{err.Error()}
		}
		cfgs[i] = wc
	}
	nc, err := c.connectWaiting(e.ctx, "rbee-worker-"+*hiveID+"-"+*workerID, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	workers := make([]*worker.Worker, len(cfgs))
	for i, wc := range cfgs {
		w, err := worker.New(nc, wc)
		if err != nil {
			return usageError{err.Error()}
		}
		if err := w.Start(e.ctx); err != nil {
			return err
		}
		_ = w.SetStatus(wire.StatusReady, wire.Healthy, "")
		workers[i] = w
	}
	log.Info("workers beating", "hive", *hiveID, "count", len(workers), "interval", *interval)
	if *simulate > 0 {
		go simulateLoad(e.ctx, workers, *interval)
	}
	<-e.ctx.Done()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = stopGracefully(w.Stop) }()
	}
	wg.Wait()
	return nil
}

// simulateLoad flips a few random workers between ready and busy every interval.
func simulateLoad(ctx context.Context, workers []*worker.Worker, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for range max(1, len(workers)/10) {
				w := workers[rand.IntN(len(workers))]
				st := wire.StatusReady
				if rand.IntN(2) == 0 {
					st = wire.StatusBusy
				}
				_ = w.SetStatus(st, wire.Healthy, "")
				if st == wire.StatusBusy {
					w.SetSlotsBusy(1)
				} else {
					w.SetSlotsBusy(0)
				}
			}
		}
	}
}
