//go:build unix

package embedded

import (
	"os"
	"syscall"
)

// tryLock takes an exclusive flock on f without waiting. The kernel drops it
// when the process dies, so a crashed broker never leaves its directory locked.
func tryLock(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

func unlock(f *os.File) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
