package gpu

import (
	"fmt"

	"github.com/rbee/heartbeat/wire"
)

// Recovery actions, as the driver recommends them (NVML's
// nvmlDeviceGpuRecoveryAction_t, field FI_DEV_GET_GPU_RECOVERY_ACTION) and
// as the wire carries them in a GPU's recovery_action.
const (
	RecoveryNone          = "none"
	RecoveryGPUReset      = "gpu_reset"
	RecoveryNodeReboot    = "node_reboot"
	RecoveryDrainP2P      = "drain_p2p"
	RecoveryDrainAndReset = "drain_and_reset"
)

// recoveryActions maps nvmlDeviceGpuRecoveryAction_t values onto the wire's
// names. BUS_RESET needs the GPU reset like GPU_RESET; SYSTEM_REBOOT is a node
// reboot; RECOVER_IMEX_DOMAIN has no wire name and is left out.
var recoveryActions = map[uint64]string{
	0: RecoveryNone,
	1: RecoveryGPUReset,
	2: RecoveryNodeReboot,
	3: RecoveryDrainP2P,
	4: RecoveryDrainAndReset,
	6: RecoveryGPUReset,
	7: RecoveryNodeReboot,
}

// RecoveryAction returns the wire name of an nvmlDeviceGpuRecoveryAction_t
// value, and false for a value without one.
func RecoveryAction(v uint64) (string, bool) {
	a, ok := recoveryActions[v]
	return a, ok
}

// XidInfo is what NVIDIA's Xid catalogue says about one Xid.
type XidInfo struct {
	// Name is the catalogue's description.
	Name string
	// Hardware is true when the Xid means the GPU or its driver is unwell;
	// false when it means an application fault (the application is
	// restarted, the GPU keeps serving).
	Hardware bool
	// Health is what the Xid makes the GPU: healthy for an application Xid,
	// degraded for a hardware condition that needs no immediate recovery,
	// unhealthy when the GPU must be reset or the node rebooted.
	Health wire.Health
	// Action is the catalogue's immediate action as a recovery action; the
	// driver's own recommendation (FI_DEV_GET_GPU_RECOVERY_ACTION) replaces it
	// where the driver gives one.
	Action string
}

// xids classifies the Xids an inference node meets, after NVIDIA's Xid
// catalogue (https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html,
// "Resolution Bucket (Immediate Action)": RESTART_APP is an application
// Xid; RESET_GPU and RESTART_BM are hardware Xids needing a GPU reset or a
// node reboot).
var xids = map[int]XidInfo{
	8:   {"GPU stopped processing", false, wire.Healthy, RecoveryNone},
	13:  {"Graphics Engine Exception", false, wire.Healthy, RecoveryNone},
	31:  {"GPU memory page fault", false, wire.Healthy, RecoveryNone},
	43:  {"GPU stopped processing", false, wire.Healthy, RecoveryNone},
	45:  {"Preemptive cleanup, due to previous errors", false, wire.Healthy, RecoveryNone},
	68:  {"NVDEC0 Exception", false, wire.Healthy, RecoveryNone},
	69:  {"Graphics Engine class error", false, wire.Healthy, RecoveryNone},
	94:  {"Contained ECC error", false, wire.Healthy, RecoveryNone},
	48:  {"Double Bit ECC Error", true, wire.Unhealthy, RecoveryGPUReset},
	61:  {"Internal micro-controller breakpoint/warning", true, wire.Unhealthy, RecoveryGPUReset},
	62:  {"Internal micro-controller halt", true, wire.Unhealthy, RecoveryGPUReset},
	63:  {"ECC page retirement or row remapping recording event", true, wire.Degraded, RecoveryNone},
	64:  {"ECC page retirement or row remapper recording failure", true, wire.Unhealthy, RecoveryGPUReset},
	74:  {"NVLink Error", true, wire.Unhealthy, RecoveryGPUReset},
	79:  {"GPU has fallen off the bus", true, wire.Unhealthy, RecoveryNodeReboot},
	92:  {"High single-bit ECC error rate", true, wire.Degraded, RecoveryNone},
	95:  {"Uncontained ECC error", true, wire.Unhealthy, RecoveryGPUReset},
	119: {"GSP RPC Timeout", true, wire.Unhealthy, RecoveryGPUReset},
	120: {"GSP Error", true, wire.Unhealthy, RecoveryGPUReset},
	140: {"Unrecovered ECC Error", true, wire.Unhealthy, RecoveryGPUReset},
	154: {"GPU Recovery Action Changed", true, wire.Unhealthy, RecoveryGPUReset},
}

// ClassifyXid returns the catalogue's verdict on xid. An Xid missing from the
// table is taken as a hardware condition, degraded: unknown is not healthy.
func ClassifyXid(xid int) XidInfo {
	if i, ok := xids[xid]; ok {
		return i
	}
	return XidInfo{Name: fmt.Sprintf("Xid %d (not in rbee's table of the catalogue)", xid), Hardware: true, Health: wire.Degraded, Action: RecoveryNone}
}
