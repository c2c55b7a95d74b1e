package wire

import (
	"slices"
	"strings"
)

// trimHeadroom is kept free below MaxPayload when trimming a hive's
// workers: Msgsize is an upper bound, but the queen stores the beat with its
// entry keys added, and a sender may add headers.
const trimHeadroom = 4 << 10

// TrimWorkers sorts h.Workers by worker_id and keeps the first of them that
// fit both MaxHiveWorkers and MaxPayload (with headroom), so that a hive's
// beat is never refused for the size of its own view. The workers left out
// are added to h.WorkersOmitted; TrimWorkers returns how many it left out.
func TrimWorkers(h *Hive) int {
	slices.SortFunc(h.Workers, func(a, b HiveWorker) int { return strings.Compare(a.WorkerID, b.WorkerID) })
	all := h.Workers
	h.Workers = nil
	size := h.Msgsize() // upper bound, workers_omitted included
	keep := 0
	for keep < len(all) && keep < MaxHiveWorkers {
		size += all[keep].Msgsize()
		if size > MaxPayload-trimHeadroom {
			break
		}
		keep++
	}
	h.Workers = all[:keep:keep]
	omitted := len(all) - keep
	h.WorkersOmitted += omitted
	return omitted
}
