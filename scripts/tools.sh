#!/usr/bin/env bash
# Installs what the tests need beyond Go modules, idempotently:
#   - the nats CLI, pinned, into ./.bin
#   - staticcheck, pinned, into ./.bin
#   - the Node.js example subscriber's packages, from its lockfile
#   - libnats-dev and libmsgpack-dev for the C example (apt-get, as root)
#   - promtool, from Debian's prometheus package, into ./.bin
#   - systemd's systemd-analyze for the units' checks (apt-get, as root)
# Each step is skipped when what it installs is already there and current.
# Prints one line per step; a failing step prints its log and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

natscli_module=github.com/nats-io/natscli/nats
natscli_version=0.5.1
staticcheck_module=honnef.co/go/tools/cmd/staticcheck
staticcheck_version=0.8.2
node_dir=examples/node-subscriber

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# run LABEL CMD...: runs CMD with its output in the log, shown only on failure.
run() {
	local label=$1
	shift
	if ! "$@" </dev/null >"$log" 2>&1; then
		echo "$label: failed: $*" >&2
		cat "$log" >&2
		exit 1
	fi
}

sha256() {
	if command -v sha256sum >/dev/null; then
		sha256sum "$1" | cut -d' ' -f1
	else
		shasum -a 256 "$1" | cut -d' ' -f1
	fi
}

# The nats CLI.
if [ -x .bin/nats ] && .bin/nats --version 2>/dev/null </dev/null | grep -qx "v\{0,1\}$natscli_version"; then
	echo "nats cli: v$natscli_version already in .bin"
else
	command -v go >/dev/null || { echo "nats cli: go not found" >&2; exit 1; }
	mkdir -p .bin
	run "nats cli" env GOFLAGS= GOBIN="$root/.bin" go install "$natscli_module@v$natscli_version"
	echo "nats cli: installed v$natscli_version into .bin"
fi

# staticcheck. "staticcheck -version" prints e.g. "staticcheck 2026.2.2 (0.8.2)".
if [ -x .bin/staticcheck ] && .bin/staticcheck -version 2>/dev/null </dev/null | grep -q "($staticcheck_version)\$"; then
	echo "staticcheck: v$staticcheck_version already in .bin"
else
	command -v go >/dev/null || { echo "staticcheck: go not found" >&2; exit 1; }
	mkdir -p .bin
	run "staticcheck" env GOFLAGS= GOBIN="$root/.bin" go install "$staticcheck_module@v$staticcheck_version"
	echo "staticcheck: installed v$staticcheck_version into .bin"
fi

# promtool, for the alert rules' checks and unit tests (deploy
# TestPrometheusRules): taken from Debian's prometheus package with apt-get
# download, so that no Prometheus service is installed or started; it needs
# only libc. apt-get update (as root) only if the first download fails.
if [ -x .bin/promtool ] && .bin/promtool --version </dev/null >/dev/null 2>&1; then
	echo "promtool: $(.bin/promtool --version 2>&1 </dev/null | head -n1) already in .bin"
else
	if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
		echo "promtool: not in .bin, and no apt-get to fetch Debian's prometheus package: put promtool (Prometheus 2.x) in .bin" >&2
		exit 1
	fi
	deb_dir=$(mktemp -d)
	if ! (cd "$deb_dir" && apt-get download prometheus </dev/null >"$log" 2>&1); then
		if [ "$(id -u)" -ne 0 ]; then
			echo "promtool: apt-get download prometheus failed; run 'apt-get update' as root, or this script as root" >&2
			cat "$log" >&2
			exit 1
		fi
		run "promtool" env DEBIAN_FRONTEND=noninteractive apt-get update
		run "promtool" sh -c "cd '$deb_dir' && apt-get download prometheus"
	fi
	mkdir -p .bin
	run "promtool" sh -c "dpkg-deb --fsys-tarfile '$deb_dir'/prometheus_*.deb | tar -x -C '$deb_dir' ./usr/bin/promtool"
	mv "$deb_dir/usr/bin/promtool" .bin/promtool
	rm -rf "$deb_dir"
	echo "promtool: installed $(.bin/promtool --version 2>&1 </dev/null | head -n1) into .bin"
fi

# The C example's libraries (integration TestCSubscriber): Debian's nats.c
# and msgpack-c, installed with apt-get as root when pkg-config lacks them
# (apt-get update only if the first try fails).
if command -v pkg-config >/dev/null && pkg-config --exists libnats msgpack; then
	echo "c-subscriber: libnats $(pkg-config --modversion libnats) and msgpack $(pkg-config --modversion msgpack) already installed"
else
	if ! command -v apt-get >/dev/null; then
		echo "c-subscriber: libnats and msgpack-c not found, and no apt-get to install them: install nats.c and msgpack-c with their pkg-config files" >&2
		exit 1
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "c-subscriber: libnats-dev and libmsgpack-dev missing; installing them needs root: run 'apt-get install -y libnats-dev libmsgpack-dev pkg-config' as root, or this script as root" >&2
		exit 1
	fi
	c_pkgs="libnats-dev libmsgpack-dev pkg-config gcc libc6-dev"
	if ! env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $c_pkgs </dev/null >"$log" 2>&1; then
		run "c-subscriber" env DEBIAN_FRONTEND=noninteractive apt-get update
		run "c-subscriber" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $c_pkgs
	fi
	echo "c-subscriber: installed libnats $(pkg-config --modversion libnats) and msgpack $(pkg-config --modversion msgpack)"
fi

# systemd-analyze, for the units' checks (integration TestSystemdUnits:
# verify, and security --offline, which needs systemd 250 or later): Debian's
# systemd package, installed with apt-get as root when missing. It starts no
# service manager.
if command -v systemd-analyze >/dev/null; then
	echo "systemd-analyze: $(systemd-analyze --version 2>/dev/null </dev/null | head -n1) already installed"
else
	if ! command -v apt-get >/dev/null; then
		echo "systemd-analyze: not found, and no apt-get to install it: install systemd 250 or later" >&2
		exit 1
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "systemd-analyze: not found; installing it needs root: run 'apt-get install -y systemd' as root, or this script as root" >&2
		exit 1
	fi
	if ! env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd </dev/null >"$log" 2>&1; then
		run "systemd-analyze" env DEBIAN_FRONTEND=noninteractive apt-get update
		run "systemd-analyze" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd
	fi
	echo "systemd-analyze: installed $(systemd-analyze --version 2>/dev/null </dev/null | head -n1)"
fi

# The Node.js subscriber's packages. npm ci removes node_modules first, so the
# lockfile hash stored inside it is present only after a complete install.
stamp=$node_dir/node_modules/.rbee-lock-sha256
want=$(sha256 "$node_dir/package-lock.json")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	echo "node-subscriber: node_modules matches package-lock.json"
else
	if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
		echo "node-subscriber: node and npm not found (Node.js 20 or later is needed)" >&2
		exit 1
	fi
	run "node-subscriber" npm ci --prefix "$node_dir" --no-audit --no-fund
	echo "$want" >"$stamp"
	echo "node-subscriber: npm ci done (node $(node --version))"
fi

# Chromium, headless, for the web view's browser test (cli TestBrowserLiveView):
# Debian's package, installed with apt-get as root when no Chromium or Chrome
# is on PATH (apt-get update only if the first try fails).
chromium_bin=
for c in chromium chromium-browser google-chrome google-chrome-stable; do
	if command -v "$c" >/dev/null; then
		chromium_bin=$c
		break
	fi
done
if [ -n "$chromium_bin" ]; then
	echo "chromium: $("$chromium_bin" --version 2>/dev/null </dev/null | head -n1) already installed"
else
	if ! command -v apt-get >/dev/null; then
		echo "chromium: not found, and no apt-get to install it: install Chromium so that 'chromium' is on PATH" >&2
		exit 1
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "chromium: not found; installing it needs root: run 'apt-get install -y chromium' as root, or this script as root" >&2
		exit 1
	fi
	if ! env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium </dev/null >"$log" 2>&1; then
		run "chromium" env DEBIAN_FRONTEND=noninteractive apt-get update
		run "chromium" env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
	fi
	if ! command -v chromium >/dev/null; then
		echo "chromium: apt-get installed the package but 'chromium' is not on PATH" >&2
		exit 1
	fi
	echo "chromium: installed $(chromium --version 2>/dev/null </dev/null | head -n1)"
fi
