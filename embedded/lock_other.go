//go:build !unix

package embedded

import "os"

// tryLock takes no lock where flock does not exist.
func tryLock(*os.File) error { return nil }

func unlock(*os.File) error { return nil }
