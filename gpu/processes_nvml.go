//go:build linux && cgo && nvml

package gpu

import (
	"slices"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/rbee/heartbeat/wire"
)

// valueNotAvailable is NVML_VALUE_NOT_AVAILABLE, which usedGpuMemory holds
// when the driver will not say (Windows WDDM, or no permission to see it).
const valueNotAvailable = ^uint64(0)

// readProcesses reads the compute and graphics running-process lists of dev
// (GPU g): an inference engine is a compute process, but one using the GPU
// through a graphics context is listed only there. A process in both lists
// counts once, with the larger figure.
func readProcesses(r *deviceReader, dev nvml.Device, g wire.GPU) []Process {
	byPID := map[int]Process{}
	for _, list := range []struct {
		op   string
		read func() ([]nvml.ProcessInfo, nvml.Return)
	}{
		{"compute processes", dev.GetComputeRunningProcesses},
		{"graphics processes", dev.GetGraphicsRunningProcesses},
	} {
		infos, ok := read(r, list.op, list.read)
		if !ok {
			continue
		}
		for _, info := range infos {
			p := Process{PID: int(info.Pid), GPUIndex: g.Index, GPUUUID: g.UUID}
			if info.UsedGpuMemory != valueNotAvailable {
				used := info.UsedGpuMemory
				p.UsedBytes = &used
			}
			if prev, seen := byPID[p.PID]; seen && prev.UsedBytes != nil && (p.UsedBytes == nil || *prev.UsedBytes > *p.UsedBytes) {
				p.UsedBytes = prev.UsedBytes
			}
			byPID[p.PID] = p
		}
	}
	out := make([]Process, 0, len(byPID))
	for _, p := range byPID {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Process) int { return a.PID - b.PID })
	return out
}

// Processes returns the processes holding GPU memory at the last Sample, one
// record per process and GPU; nil before the first Sample or without GPU data.
func (s *Sampler) Processes() []Process {
	s.procMu.Lock()
	defer s.procMu.Unlock()
	return slices.Clone(s.procs)
}
