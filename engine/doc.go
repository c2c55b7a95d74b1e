// Package engine reads what an inference engine is really doing, and runs
// the engine as a supervised child process.
//
// A Prober reads the engine's own health endpoint and its Prometheus
// /metrics on its own goroutine, one probe per interval, and keeps the
// latest reading: a heartbeat never waits for a probe. A probe that fails
// or runs past its timeout leaves the last good metrics in place, marked
// stale, the way the hive's stats sampler does. Presets name the endpoints
// and metric families of vLLM, llama.cpp's llama-server, Hugging Face TGI and
// SGLang, each taken from the engine's own source or documentation (cited at
// the preset); Generic takes them from the caller.
//
// A Process starts the engine as a child, passes its stdout and stderr
// through, forwards signals to it and reports how it exited.
package engine
