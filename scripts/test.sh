#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs formatting,
# lints, every Rust test (against real redis-server, nats-server and haproxy), the offline
# manifest checks, the rehearsal of the rendered manifests and the Dockerfile's documented runs,
# the JS SDK's Node and browser tests, and the client conformance suite (JS, Python and Rust
# SDKs). Fails loudly when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

say "system packages (redis-server, haproxy, openssl, promtool)"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v haproxy >/dev/null || missing+=(haproxy)
# The TLS tests make a throwaway CA and certificates with the openssl CLI.
command -v openssl >/dev/null || missing+=(openssl)
# `promtool check metrics` on a live /metrics scrape (gateway/tests/admin_plane.rs).
command -v promtool >/dev/null || missing+=(prometheus)
apt_install "${missing[@]}"
redis-server --version
# Not `| head`: with pipefail, haproxy killed by SIGPIPE would fail the run.
haproxy_version=$(haproxy -v)
echo "${haproxy_version%%$'\n'*}"
openssl version
promtool --version 2>&1 | sed -n 1p
export REDIS_SERVER_BIN HAPROXY_BIN PROMTOOL_BIN
REDIS_SERVER_BIN=$(command -v redis-server)
HAPROXY_BIN=$(command -v haproxy)
PROMTOOL_BIN=$(command -v promtool)

ensure_nats

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
cargo test --workspace --locked

say "deploy/ manifests (offline validation)"
bash scripts/validate-manifests.sh

say "deploy/ rehearsal (the rendered overlays and the Dockerfile's runs as local processes)"
cargo build -p gateway --bin gateway --locked
GATEWAY_BIN="$PWD/target/debug/gateway" .venv/bin/python -m pytest -q -p no:cacheprovider -p no:cloudcoil \
  deploy/tests/test_rehearsal.py deploy/tests/test_dockerfile.py

say "JS SDK, demo and fleet pages (Node tests and headless Chromium)"
bash scripts/test-js.sh

say "client conformance suite (JS, Python, Rust SDKs)"
bash scripts/test-conformance.sh

say "all checks passed"
