// Package lifecycle states the one contract every long-lived rbee type keeps
// (the queen, the hive, the worker, the publisher, the registry watcher, the
// samplers, the embedded server) and holds its shared sentinel error.
//
// The contract:
//   - Start(ctx) starts the type's goroutines and returns once it is running
//     (or with the first error). It runs until Stop is called or ctx ends,
//     whichever comes first.
//   - A second Start, or a Start after Stop, returns an error wrapping
//     ErrStarted and changes nothing.
//   - Stop before Start, and Stop twice, are safe: they return at once.
//   - Stop cancels what Start began and waits for its goroutines, shutting
//     down in dependency order.
//   - Every field read or written by two goroutines is guarded; accessors may
//     be called concurrently with Start and Stop.
//
// Where the types differ, in the shape of the calls only:
//   - Stop takes a ctx where it waits on something outside the process (the
//     queen's writes, a goodbye on the wire): queen.Queen, publisher.Publisher,
//     worker.Worker, hive.Hive, events.Publisher; it returns an error where the
//     caller must learn that the goodbye was not sent (the publisher, worker
//     and hive). The others' Stop() waits only for their own goroutines.
//   - registry.Watch and embedded.New/Start return their value already
//     running: it has no Start, and registry.Watcher.Stop and
//     embedded.Server.Shutdown end it.
//
// Its tests hold each claim under the race detector.
package lifecycle

import "errors"

// ErrStarted is returned (wrapped) by Start when the value was started before,
// or stopped.
var ErrStarted = errors.New("already started")
