package events

import (
	"fmt"
	"slices"
	"strings"

	"github.com/rbee/heartbeat/registry"
	"github.com/rbee/heartbeat/subjects"
)

// Filter selects registry events by type. The zero Filter selects every
// event. It is a value: copy it freely.
type Filter struct {
	include, exclude []registry.EventType
}

// StatusFlips are the events a LivenessChanges filter leaves out: updated,
// a worker's status or a hive's health changing (busy ↔ ready is most of a
// busy fleet's history).
var StatusFlips = []registry.EventType{registry.Updated}

// LivenessChanges returns the Filter `rbee events` applies by default: every
// event but the status flips.
func LivenessChanges() Filter { return Filter{exclude: slices.Clone(StatusFlips)} }

// ParseFilter returns the Filter keeping the include types (all when none)
// less the exclude types. Each argument may hold several names separated by
// commas. It returns an error wrapping ErrUnknownEvent for a name that is
// not a registry event type, and one wrapping ErrInvalidConfig when nothing
// would be selected.
func ParseFilter(include, exclude []string) (Filter, error) {
	var f Filter
	var err error
	if f.include, err = eventTypes(include); err != nil {
		return Filter{}, err
	}
	if f.exclude, err = eventTypes(exclude); err != nil {
		return Filter{}, err
	}
	if len(f.Types()) == 0 {
		return Filter{}, fmt.Errorf("%w: the filter selects no event", ErrInvalidConfig)
	}
	return f, nil
}

func eventTypes(args []string) ([]registry.EventType, error) {
	var out []registry.EventType
	for _, a := range args {
		for _, n := range strings.Split(a, ",") {
			n = strings.TrimSpace(n)
			if n == "" {
				continue
			}
			t := registry.EventType(n)
			if !slices.Contains(registry.EventTypes, t) {
				return nil, fmt.Errorf("%w %q (want %s)", ErrUnknownEvent, n, eventNames())
			}
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	return out, nil
}

func eventNames() string {
	names := make([]string, len(registry.EventTypes))
	for i, t := range registry.EventTypes {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// Match reports whether the filter keeps an event of type t.
func (f Filter) Match(t string) bool {
	et := registry.EventType(t)
	if len(f.include) > 0 && !slices.Contains(f.include, et) {
		return false
	}
	return !slices.Contains(f.exclude, et)
}

// All reports whether the filter keeps every event type.
func (f Filter) All() bool { return len(f.include) == 0 && len(f.exclude) == 0 }

// Types returns the registry event types the filter keeps, in
// registry.EventTypes order.
func (f Filter) Types() []registry.EventType {
	var out []registry.EventType
	for _, t := range registry.EventTypes {
		if f.Match(string(t)) {
			out = append(out, t)
		}
	}
	return out
}

// String returns the filter as `rbee events` flags would spell it, or "all".
func (f Filter) String() string {
	var parts []string
	if len(f.include) > 0 {
		parts = append(parts, "event "+joinTypes(f.include))
	}
	if len(f.exclude) > 0 {
		parts = append(parts, "exclude "+joinTypes(f.exclude))
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, ", ")
}

func joinTypes(ts []registry.EventType) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = string(t)
	}
	return strings.Join(s, ",")
}

// subjects returns the stream filter subjects selecting f's events, of one
// hive and its workers when hiveID is set.
func (f Filter) subjects(s subjects.Scheme, hiveID string) []string {
	if f.All() {
		if hiveID != "" {
			return s.HiveEvents(hiveID)
		}
		return []string{s.AllEvents()}
	}
	var out []string
	for _, t := range f.Types() {
		if hiveID != "" {
			out = append(out, s.Event(string(t), hiveID, ""), s.Event(string(t), hiveID, "*"))
		} else {
			out = append(out, s.Event(string(t), ">", ""))
		}
	}
	return out
}
