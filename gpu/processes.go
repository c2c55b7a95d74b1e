package gpu

import "sort"

// Process is one process's use of one GPU, from NVML's running-process lists.
type Process struct {
	PID      int
	GPUIndex int
	GPUUUID  string
	// UsedBytes is the GPU memory the process holds there; nil where the
	// driver does not say (NVML_VALUE_NOT_AVAILABLE, e.g. without permission).
	UsedBytes *uint64
}

// Usage is what one process holds over all GPUs.
type Usage struct {
	// UsedBytes sums the process's memory over the GPUs that reported it;
	// nil when none did.
	UsedBytes *uint64
	// GPUUUIDs are the GPUs it holds memory on, sorted.
	GPUUUIDs []string
}

// ByPID sums procs per process ID.
func ByPID(procs []Process) map[int]Usage {
	out := make(map[int]Usage)
	for _, p := range procs {
		u := out[p.PID]
		if p.UsedBytes != nil {
			n := *p.UsedBytes
			if u.UsedBytes != nil {
				n += *u.UsedBytes
			}
			u.UsedBytes = &n
		}
		if p.GPUUUID != "" {
			u.GPUUUIDs = append(u.GPUUUIDs, p.GPUUUID)
		}
		out[p.PID] = u
	}
	for pid, u := range out {
		sort.Strings(u.GPUUUIDs)
		out[pid] = u
	}
	return out
}
