package gpu

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rbee/heartbeat/wire"
)

// Event is one GPU event the driver reported.
type Event struct {
	Index int
	UUID  string
	// Xid is set for an Xid critical error event.
	Xid *int
	// Unavailable is true for a GPU-unavailable event.
	Unavailable bool
	// RecoveryAction is the driver's recommendation, "" where it gave none.
	RecoveryAction string
	At             time.Time
}

// record is the last event state of one GPU.
type record struct {
	xid         *int
	at          time.Time
	action      string
	unavailable bool
}

// events keeps the latest event per GPU; Events embeds it in every build.
type events struct {
	mu   sync.Mutex
	byID map[string]*record // by UUID, or "#<index>" without one
}

func gpuKey(index int, uuid string) string {
	if uuid != "" {
		return uuid
	}
	return fmt.Sprintf("#%d", index)
}

// Apply puts the latest event of each GPU into its record in gpus (matched
// by UUID, or by index for a GPU without one): xid, xid_at_ms and
// recovery_action, and the GPU's health by NVIDIA's Xid catalogue. It
// returns the hive's verdict: degraded with a reason naming each GPU a
// hardware Xid or an unavailable event made unwell, or healthy and "".
// Application Xids are recorded but change no health.
func (e *events) Apply(gpus []wire.GPU) (wire.Health, string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.byID) == 0 {
		return wire.Healthy, ""
	}
	var reasons []string
	for i := range gpus {
		g := &gpus[i]
		r := e.byID[gpuKey(g.Index, g.UUID)]
		if r == nil && g.UUID != "" {
			r = e.byID[gpuKey(g.Index, "")]
		}
		if r == nil {
			continue
		}
		if r.action != "" {
			g.RecoveryAction = r.action
		}
		var why []string
		health := wire.Healthy
		if r.xid != nil {
			x := *r.xid
			g.Xid, g.XidAtMs = &x, r.at.UnixMilli()
			if info := ClassifyXid(x); info.Hardware {
				health = info.Health
				why = append(why, fmt.Sprintf("Xid %d: %s", x, info.Name))
			}
		}
		if r.unavailable {
			health = wire.Unhealthy
			why = append(why, "GPU unavailable")
		}
		if len(why) == 0 {
			continue
		}
		if g.RecoveryAction != "" && g.RecoveryAction != RecoveryNone {
			why = append(why, "recovery "+g.RecoveryAction)
		}
		reason := strings.Join(why, ", ")
		g.Health = worse(g.Health, health)
		if g.HealthReason == "" {
			g.HealthReason = reason
		} else {
			g.HealthReason += "; " + reason
		}
		reasons = append(reasons, fmt.Sprintf("gpu %d: %s", g.Index, reason))
	}
	if len(reasons) == 0 {
		return wire.Healthy, ""
	}
	return wire.Degraded, strings.Join(reasons, "; ")
}

func rank(h wire.Health) int {
	switch h {
	case wire.Unhealthy:
		return 2
	case wire.Degraded:
		return 1
	}
	return 0
}

func worse(a, b wire.Health) wire.Health {
	if rank(b) > rank(a) {
		return b
	}
	if a == "" {
		return wire.Healthy
	}
	return a
}
