// Package engine reads what an inference engine is really doing, and runs
// the engine as a supervised child process.
//
// A Prober reads the engine's own health endpoint, its Prometheus /metrics
// and its info endpoint on its own goroutine, one probe per interval, and
// keeps the latest reading: a heartbeat never waits for a probe. Each
// endpoint's failure changes only what it feeds: health the health and
// status, /metrics the load figures (the last good ones stay, marked stale,
// the way the hive's stats sampler does), info the model and version (asked
// again rarely). Presets name the endpoints and metric families of vLLM,
// llama.cpp's llama-server, Hugging Face TGI and SGLang, progress from each
// engine's per-step counter, each taken from the engine's own source (cited
// at the preset); Generic takes them from the caller. An API key, when set,
// goes with every request as a bearer token.
//
// A Process starts the engine as a child, passes its stdout and stderr
// through, forwards signals to it and reports how it exited.
package engine
