// Package subjects is the subject and KV-key scheme of rbee heartbeats: it
// builds and parses the NATS subjects workers and hives publish on, the keys
// of the registry buckets, and validates hive and worker IDs.
//
// It is pure: constants and functions, no I/O. Every function may be called
// concurrently.
//
// The scheme, with the default prefix "rbee":
//
//	rbee.hb.worker.<hive_id>.<worker_id>   worker heartbeat
//	rbee.hb.hive.<hive_id>                 hive heartbeat
//	rbee_workers  key <hive_id>.<worker_id> worker registry bucket
//	rbee_hives    key <hive_id>             hive registry bucket
package subjects
