package queen

import (
	"errors"

	"github.com/rbee/heartbeat/lifecycle"
)

// ErrInvalidConfig is returned (wrapped) by Config.Validate and New.
var ErrInvalidConfig = errors.New("invalid queen config")

// ErrStarted is returned (wrapped) by Start on a queen already started or
// stopped; it is lifecycle.ErrStarted.
var ErrStarted = lifecycle.ErrStarted

// ErrServerTooOld is returned (wrapped) by Start when the NATS server lacks
// per-message TTLs and KV limit markers (nats-server 2.11 or later).
var ErrServerTooOld = errors.New("nats-server too old")

// ErrBucketUnreplicable is returned (wrapped) by Start when --replicas asks
// for replicas of a registry bucket made for one server (CreateBucket).
var ErrBucketUnreplicable = errors.New("the bucket was made for one server (async persist mode) and cannot be given replicas")
