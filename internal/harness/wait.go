package harness

import (
	"fmt"
	"time"
)

// WaitFor calls cond every 50 ms until it returns nil or timeout passes; the
// error names what was awaited and cond's last error.
func WaitFor(timeout time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s: %w", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
