// Command rbee runs the rbee heartbeat roles: queen, hive, worker, and the
// operator tools status, watch, decode and demo. Run `rbee help` for usage.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/rbee/heartbeat/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
