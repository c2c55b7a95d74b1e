// Package hoststats collects a hive's machine statistics — CPU utilisation
// over the last interval, RAM, the hottest host temperature sensor and every
// GPU (through package gpu) — and keeps the latest sample ready for the
// heartbeat.
//
// Collection runs in the Sampler's own goroutine on the heartbeat cadence,
// off the publishing path: building a beat only copies the latest sample
// (Latest, Fill) and never waits for hardware. A collection that fails or
// hangs past its timeout leaves the last good sample in place, reported stale
// with its age, and no second collection starts while one is still running.
package hoststats
