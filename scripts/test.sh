#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# beyond Go modules (the pinned nats CLI and staticcheck, the Node.js
# subscriber's packages), then checks formatting, vet and staticcheck, then runs
# every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== go modules"
go mod download

if [ -x scripts/tools.sh ]; then
	echo "== tools"
	scripts/tools.sh
fi
export PATH="$PWD/.bin:$PATH"
# Tests that drive the nats CLI and the Node.js subscriber fail, not skip, when they are missing.
export RBEE_REQUIRE_TOOLS=1
# go-nvml's cgo wrappers call functions nvml.h marks deprecated: keep the
# compiler's warnings about them out of the output.
export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g -Wno-deprecated-declarations}"

echo "== gofmt, go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './node_modules/*'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change: $unformatted" >&2
	exit 1
fi
go vet ./...
# The NVML code (package gpu) builds only with -tags nvml: vet, check and
# test it too.
go vet -tags nvml ./...
CGO_ENABLED=0 go build ./...

echo "== staticcheck"
staticcheck ./...
staticcheck -tags nvml ./...

echo "== go test -race"
go test -race -count=1 -timeout 12m -tags nvml ./...
