//go:build unix

package engine

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// ownGroup makes the child the leader of a process group of its own, so that
// a signal reaches every process the engine started (vLLM's and SGLang's
// workers, a shell's children), not only the first.
func ownGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends sig to every process of the group pid leads. A group
// already gone is not an error.
func signalGroup(pid int, sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return errors.New("not a unix signal: " + sig.String())
	}
	if err := syscall.Kill(-pid, s); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}
