// Package web is the queen's live web view: a page embedded in the binary
// (no build step, no CDN, works offline) and the server-sent event stream
// that keeps it current.
//
// A View watches the registry buckets itself (package registry) and sends
// every page one snapshot when it connects, then the entries that changed,
// coalesced, and every registry event as it happens. The page renders hives
// with their GPUs, workers and recent events from that stream alone; it
// never polls.
//
// The page builds its DOM with textContent only: IDs are validated by the
// queen, but model names, health reasons and hostnames are whatever a sender
// wrote, and are shown, never interpreted.
package web
