#!/usr/bin/env bash
# Tests of the JS client SDK, the demo page and the fleet page, on a fresh machine: installs what
# they need (npm ci in clients/js, Debian's chromium and redis-server, nats-server in .venv),
# builds the gateway, then runs with Node's test runner:
#   - clients/js/test/unit.test.js     the SDK against a scripted fake gateway
#   - clients/js/test/presence.test.js the SDK's join/leave handling, same fake gateway
#   - clients/js/test/hello-subscribe.test.js subscriptions sent in `hello`, fake and real gateways
#   - clients/js/test/gateway.test.js  the SDK against real gateway processes (embedded, and two
#                                      pods on redis-server + nats-server: drain, frozen pod)
#   - clients/js/test/browser.test.js  the demo and fleet pages in headless Chromium on a 3-pod
#                                      fleet started by scripts/fleet.sh
# Screenshots and logs: target/test-output/. UPDATE_SCREENSHOTS=1 also refreshes docs/img/.
# Fails loudly when something cannot be installed or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

say "node (20 or later)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "node $(node --version) is too old: the tests need Node 20 or later (playwright-core)" >&2
  exit 1
fi
node --version

say "system packages (chromium, redis-server, fonts)"
missing=()
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
apt_install "${missing[@]}"
export CHROMIUM_BIN=${CHROMIUM_BIN:-/usr/bin/chromium}
"$CHROMIUM_BIN" --version 2>/dev/null
export REDIS_SERVER_BIN
REDIS_SERVER_BIN=${REDIS_SERVER_BIN:-$(command -v redis-server)}
"$REDIS_SERVER_BIN" --version

ensure_nats

say "npm ci (clients/js: ws, playwright-core; no browser download)"
(cd clients/js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

say "cargo build -p gateway"
cargo build -p gateway --locked
cargo_target=${CARGO_TARGET_DIR:-$root/target}
# The tests run a private copy, so a later build cannot swap the binary mid-run.
mkdir -p target/test-output/js target/js-test
cp "$cargo_target/debug/gateway" target/js-test/gateway
export GATEWAY_BIN="$root/target/js-test/gateway"

say "node --test: SDK unit tests, real gateways, browser (headless chromium)"
cd clients/js
node --test --test-concurrency=1 --test-timeout=180000 \
  test/unit.test.js test/presence.test.js test/hello-subscribe.test.js test/gateway.test.js test/browser.test.js

say "JS tests passed (screenshots in target/test-output/)"
