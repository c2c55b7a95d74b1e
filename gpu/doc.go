// Package gpu samples every GPU on the machine through NVML: index, UUID,
// name, VRAM used and total, utilisation, temperature and power, and marks a
// GPU degraded when NVML reports a condition that makes it unwell
// (uncorrected ECC errors, hardware or thermal clock slowdown, pending page
// retirement or row remapping).
//
// Missing hardware is normal. Without the NVML library, without a loaded
// driver, with no GPU, or in a build without cgo, Sample returns an empty,
// non-nil slice and no error, and says so once at debug level. A measurement
// a device cannot give is left nil in its wire.GPU, never reported as zero,
// and never fails the whole sample.
//
// The NVML-backed Sampler and NewWithLibrary exist only on linux with cgo
// and the build tag nvml (go build -tags nvml): go-nvml's C wrappers call
// functions NVIDIA's header marks deprecated, and compiling them prints
// about 150 lines of C compiler warnings that a module cannot silence for
// its dependency, so a plain go build or go run leaves NVML out. Other
// builds have a Sampler with the same New, Sample and Close that always
// reports no GPU data and says so once (NVML is false).
package gpu
