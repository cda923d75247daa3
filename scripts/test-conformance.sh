#!/usr/bin/env bash
# The client conformance suite (clients/conformance): every scenario against the JS, Python and
# Rust SDKs' drivers, on real gateways, redis-server, nats-server and haproxy. Installs what it needs
# (the Python SDK and pytest into .venv, npm ci for the JS SDK when not done yet), builds the
# gateway and the Rust driver, runs the suite, and checks that the feature matrix in
# docs/clients.md is the one this run gives. Transcripts and logs: target/test-output/conformance/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v haproxy >/dev/null || missing+=(haproxy)
apt_install "${missing[@]}"
export REDIS_SERVER_BIN=${REDIS_SERVER_BIN:-$(command -v redis-server)}
export HAPROXY_BIN=${HAPROXY_BIN:-$(command -v haproxy)}
ensure_nats
command -v node >/dev/null || { echo "node is missing: scripts/test-js.sh installs it" >&2; exit 1; }

say "Python SDK and pytest into .venv"
.venv/bin/pip install -q ./clients/python pytest
rm -rf clients/python/build clients/python/src/*.egg-info

say "JS SDK packages"
[ -d clients/js/node_modules/ws ] ||
  (cd clients/js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

say "cargo build: gateway, the Rust driver"
cargo build --locked -p gateway -p gateway-client --example conformance_driver
cargo_target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p target/conformance-bin
cp "$cargo_target/debug/gateway" target/conformance-bin/gateway
export GATEWAY_BIN="$root/target/conformance-bin/gateway"

say "Python SDK unit tests"
# Plugins of unrelated packages in .venv are not loaded.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
.venv/bin/python -m pytest -q clients/python/tests

say "conformance suite: JS, Python, Rust"
.venv/bin/python -m pytest -q clients/conformance

say "conformance suite passed (matrix in docs/clients.md matches)"
