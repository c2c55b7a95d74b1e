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
// The NVML-backed Sampler and NewWithLibrary exist only on linux with cgo;
// other builds have a Sampler with the same New, Sample and Close that always
// reports no GPU data.
package gpu
