package subjects

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultPrefix is the first subject token and the bucket-name prefix unless
// configured otherwise.
const DefaultPrefix = "rbee"

// MaxIDLen is the longest hive or worker ID accepted.
const MaxIDLen = 64

// MaxPrefixLen is the longest prefix accepted.
const MaxPrefixLen = 32

// Kind is the kind of heartbeat a subject carries.
type Kind string

const (
	// KindWorker marks a worker heartbeat.
	KindWorker Kind = "worker"
	// KindHive marks a hive heartbeat.
	KindHive Kind = "hive"
	// KindQueen marks a queen heartbeat.
	KindQueen Kind = "queen"
)

// ErrInvalidID is returned (wrapped) for a hive or worker ID outside [A-Za-z0-9_-]{1,64}.
var ErrInvalidID = errors.New("invalid id")

// ErrInvalidPrefix is returned (wrapped) for a prefix outside [A-Za-z0-9_-]{1,32}.
var ErrInvalidPrefix = errors.New("invalid prefix")

// ErrNotHeartbeat is returned (wrapped) by Parse for a subject outside the heartbeat scheme.
var ErrNotHeartbeat = errors.New("not a heartbeat subject")

// ErrInvalidKey is returned (wrapped) by the key parsers for a malformed registry key.
var ErrInvalidKey = errors.New("invalid registry key")

func validToken(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidID reports whether id matches [A-Za-z0-9_-]{1,64}.
func ValidID(id string) bool { return validToken(id, MaxIDLen) }

// ValidateID returns nil if id is a valid hive or worker ID, else an error
// wrapping ErrInvalidID that names what (e.g. "hive id") and says why.
func ValidateID(what, id string) error {
	if ValidID(id) {
		return nil
	}
	switch {
	case id == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalidID, what)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrInvalidID, what, len(id), MaxIDLen)
	default:
		return fmt.Errorf("%w: %s %q may only contain A-Z a-z 0-9 _ -", ErrInvalidID, what, id)
	}
}

// Scheme builds and parses subjects and keys under one prefix. The zero value
// is not usable; create one with New.
type Scheme struct {
	prefix string
	hb     string // "<prefix>.hb."
}

// New returns the Scheme for prefix, or an error wrapping ErrInvalidPrefix if
// prefix is not a single [A-Za-z0-9_-]{1,32} token (it is also used in bucket
// names, which allow no dots).
func New(prefix string) (Scheme, error) {
	if !validToken(prefix, MaxPrefixLen) {
		return Scheme{}, fmt.Errorf("%w: %q must be 1-%d characters of A-Z a-z 0-9 _ -", ErrInvalidPrefix, prefix, MaxPrefixLen)
	}
	return Scheme{prefix: prefix, hb: prefix + ".hb."}, nil
}

// Default returns the Scheme for DefaultPrefix.
func Default() Scheme {
	s, _ := New(DefaultPrefix)
	return s
}

// Prefix returns the scheme's prefix.
func (s Scheme) Prefix() string { return s.prefix }

// Worker returns the subject of a worker's heartbeat. It does not validate the IDs.
func (s Scheme) Worker(hiveID, workerID string) string {
	return s.hb + string(KindWorker) + "." + hiveID + "." + workerID
}

// Hive returns the subject of a hive's heartbeat. It does not validate the ID.
func (s Scheme) Hive(hiveID string) string {
	return s.hb + string(KindHive) + "." + hiveID
}

// Queen returns the subject of a queen's heartbeat. It does not validate the ID.
func (s Scheme) Queen(queenID string) string {
	return s.hb + string(KindQueen) + "." + queenID
}

// AllQueens returns the wildcard subject matching every queen heartbeat.
func (s Scheme) AllQueens() string { return s.hb + string(KindQueen) + ".*" }

// QueensBucket returns the name of the queen registry bucket ("rbee_queens" by default).
func (s Scheme) QueensBucket() string { return s.prefix + "_queens" }

// EventsStream returns the name of the event history stream ("rbee_events" by default).
func (s Scheme) EventsStream() string { return s.prefix + "_events" }

// Event returns the subject a registry event is published on:
// <prefix>.evt.<event>.<hive_id> for a hive, <prefix>.evt.<event>.<hive_id>.<worker_id>
// for a worker (workerID non-empty). It does not validate its arguments.
func (s Scheme) Event(event, hiveID, workerID string) string {
	subj := s.prefix + ".evt." + event + "." + hiveID
	if workerID != "" {
		subj += "." + workerID
	}
	return subj
}

// AllEvents returns the wildcard subject matching every registry event.
func (s Scheme) AllEvents() string { return s.prefix + ".evt.>" }

// HiveEvents returns the wildcard subjects matching every event of one hive and of its workers.
func (s Scheme) HiveEvents(hiveID string) []string {
	return []string{s.prefix + ".evt.*." + hiveID, s.prefix + ".evt.*." + hiveID + ".*"}
}

// All returns the wildcard subject matching every heartbeat.
func (s Scheme) All() string { return s.hb + ">" }

// AllWorkers returns the wildcard subject matching every worker heartbeat.
func (s Scheme) AllWorkers() string { return s.hb + string(KindWorker) + ".*.*" }

// AllHives returns the wildcard subject matching every hive heartbeat.
func (s Scheme) AllHives() string { return s.hb + string(KindHive) + ".*" }

// HiveWorkers returns the wildcard subject matching the heartbeats of one hive's workers.
func (s Scheme) HiveWorkers(hiveID string) string {
	return s.hb + string(KindWorker) + "." + hiveID + ".*"
}

// WorkersBucket returns the name of the worker registry bucket ("rbee_workers" by default).
func (s Scheme) WorkersBucket() string { return s.prefix + "_workers" }

// HivesBucket returns the name of the hive registry bucket ("rbee_hives" by default).
func (s Scheme) HivesBucket() string { return s.prefix + "_hives" }

// Address names the sender of a heartbeat: its kind and IDs. WorkerID is
// empty for a hive; a queen has only QueenID.
type Address struct {
	Kind     Kind
	HiveID   string
	WorkerID string
	QueenID  string
}

// Parse returns the Address of a heartbeat subject under this scheme, or an
// error wrapping ErrNotHeartbeat if the subject is outside the scheme, or
// ErrInvalidID if a token is not a valid ID.
func (s Scheme) Parse(subject string) (Address, error) {
	rest, ok := strings.CutPrefix(subject, s.hb)
	if !ok {
		return Address{}, fmt.Errorf("%w: %q lacks prefix %q", ErrNotHeartbeat, subject, s.hb)
	}
	// Tokens cut in place, not split into a slice: every beat is parsed.
	kind, rest, one := strings.Cut(rest, ".")
	id1, id2, two := strings.Cut(rest, ".")
	switch {
	case strings.Contains(id2, "."):
	case kind == string(KindWorker) && two:
		if err := ValidateID("hive id", id1); err != nil {
			return Address{}, err
		}
		if err := ValidateID("worker id", id2); err != nil {
			return Address{}, err
		}
		return Address{Kind: KindWorker, HiveID: id1, WorkerID: id2}, nil
	case kind == string(KindHive) && one && !two:
		if err := ValidateID("hive id", id1); err != nil {
			return Address{}, err
		}
		return Address{Kind: KindHive, HiveID: id1}, nil
	case kind == string(KindQueen) && one && !two:
		if err := ValidateID("queen id", id1); err != nil {
			return Address{}, err
		}
		return Address{Kind: KindQueen, QueenID: id1}, nil
	}
	return Address{}, fmt.Errorf("%w: %q", ErrNotHeartbeat, subject)
}

// WorkerKey returns the registry key of a worker: "<hive_id>.<worker_id>".
func WorkerKey(hiveID, workerID string) string { return hiveID + "." + workerID }

// HiveKey returns the registry key of a hive: "<hive_id>".
func HiveKey(hiveID string) string { return hiveID }

// ParseWorkerKey splits a worker registry key into its hive and worker IDs, or
// returns an error wrapping ErrInvalidKey.
func ParseWorkerKey(key string) (hiveID, workerID string, err error) {
	h, w, ok := strings.Cut(key, ".")
	if !ok || !ValidID(h) || !ValidID(w) {
		return "", "", fmt.Errorf("%w: %q is not <hive_id>.<worker_id>", ErrInvalidKey, key)
	}
	return h, w, nil
}
