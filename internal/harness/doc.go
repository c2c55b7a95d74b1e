// Package harness runs rbee the way an operator does, each part in its own
// process, for the programs that measure and attack it (bench, chaos): it
// builds the binaries, starts and stops child processes, reads their CPU time
// and memory from /proc, and scrapes a queen's /metrics.
//
// Everything listens on loopback. A child is started in its own process group
// and is killed if the process that started it dies.
package harness
