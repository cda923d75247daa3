#!/usr/bin/env bash
# CPU cost in instructions, counted by valgrind's callgrind: repeatable on a loaded machine,
# where wall-clock rates vary by tens of percent between runs. For each server (the gateway,
# and the raw baseline `wsload baseline-server`) and each workload it runs the same load twice,
# small and large, and reports the difference per unit: the marginal instructions per delivery
# (fan-out) and per session (handshake, hello + subscribe), without the start-up cost.
#
#   scripts/bench-instructions.sh [fanout|handshakes]...     (default: both)
#
# Servers run under valgrind, about 50x slower: the loads are small (100 subscribers at
# 20 msg/s; 500 and 1,000 sessions), so batches are single frames as at low rates. User-space
# instructions only: a syscall counts as its libc wrapper, so this measures the work the
# server adds per unit, not the kernel's share. GATEWAY_BIN points at another gateway binary
# (to compare two commits); SKIP_BUILD=1 reuses the binaries. Results: $BENCH_OUT (target/bench).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${BENCH_OUT:-$ROOT/target/bench}/instructions
mkdir -p "$OUT"
BIN=$ROOT/target/release
GATEWAY=${GATEWAY_BIN:-$BIN/gateway}
WSLOAD=$BIN/wsload
SERVER_PID=

cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -INT "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap cleanup EXIT

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p gateway -p loadtests
fi
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 2; }

wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2
  return 1
}

export GATEWAY_MAX_CONNECTIONS=20000 RUST_LOG=warn

# start SERVER TAG: runs the gateway or the baseline under callgrind; its URL in URL.
start() {
  local server=$1 tag=$2
  local vg=(valgrind --tool=callgrind --callgrind-out-file="$OUT/$tag.out")
  if [ "$server" = gateway ]; then
    "${vg[@]}" "$GATEWAY" --pod-name cg --listen 127.0.0.1:18180 --admin-listen 127.0.0.1:19190 \
      --max-conns-per-ip 0 --max-new-conns-per-ip 0 --max-frame-rate 0 \
      --max-publish-bytes-rate 0 --max-handshakes 100000 --handshake-timeout 60s \
      >"$OUT/$tag.log" 2>&1 &
    URL=ws://127.0.0.1:18180/ws
    SERVER_PID=$!
    wait_port 18180
  else
    "${vg[@]}" "$WSLOAD" baseline-server --listen 127.0.0.1:19390 >"$OUT/$tag.log" 2>&1 &
    URL=ws://127.0.0.1:19390/ws
    SERVER_PID=$!
    wait_port 19390
  fi
}

# stop_and_count TAG: ends the server (SIGINT: callgrind writes its counts at exit) and sets
# INSTRUCTIONS from valgrind's summary.
stop_and_count() {
  local tag=$1
  cleanup
  INSTRUCTIONS=$(awk '/Collected :/ { print $NF; exit }' "$OUT/$tag.log")
  [ -n "$INSTRUCTIONS" ] || { echo "no instruction count in $OUT/$tag.log" >&2; exit 1; }
}

# fanout_once SERVER SECONDS: 100 subscribers on one topic, 20 msg/s of 100 bytes. Sets
# INSTRUCTIONS and UNITS (deliveries).
fanout_once() {
  local server=$1 secs=$2 tag=fanout-$1-$2
  start "$server" "$tag"
  "$WSLOAD" fanout --target "$server" --url "$URL" --subscribers 100 --topics 1 --publishers 1 \
    --payload-bytes 100 --rate 20 --duration "$secs" --settle 60 --connect-rate 200 \
    --max-duration 280 --json "$OUT/$tag.json" >"$OUT/$tag.wsload.log" 2>&1
  UNITS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["delivered"])' "$OUT/$tag.json")
  stop_and_count "$tag"
}

# handshakes_once SERVER SESSIONS: sessions that connect, hello and subscribe, then close.
# Sets INSTRUCTIONS and UNITS (sessions).
handshakes_once() {
  local server=$1 n=$2 tag=handshakes-$1-$2
  start "$server" "$tag"
  "$WSLOAD" connect --target "$server" --url "$URL" --clients "$n" --topics 100 \
    --connect-rate 200 --connect-concurrency 16 --hold 0 --max-duration 280 \
    --json "$OUT/$tag.json" >"$OUT/$tag.wsload.log" 2>&1
  UNITS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ready"])' "$OUT/$tag.json")
  stop_and_count "$tag"
}

# marginal WHAT FN SMALL LARGE: per-unit instructions between the two sizes, for both servers.
marginal() {
  local what=$1 fn=$2 small=$3 large=$4
  declare -A per
  for server in baseline gateway; do
    "$fn" "$server" "$small"
    local i1=$INSTRUCTIONS u1=$UNITS
    "$fn" "$server" "$large"
    local i2=$INSTRUCTIONS u2=$UNITS
    per[$server]=$(( (i2 - i1) / (u2 - u1) ))
    echo "$what $server: $i1 instructions for $u1, $i2 for $u2: ${per[$server]} per unit"
  done
  python3 -c 'import sys; g,b=int(sys.argv[1]),int(sys.argv[2]); print(f"'"$what"': gateway {g} / baseline {b} instructions per unit = {g/b:.2f}x")' \
    "${per[gateway]}" "${per[baseline]}" | tee -a "$OUT/summary.txt"
}

runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(fanout handshakes)
for r in "${runs[@]}"; do
  case $r in
    fanout) marginal "per delivery" fanout_once 10 20 ;;
    handshakes) marginal "per session (handshake)" handshakes_once 500 1000 ;;
    *) echo "unknown run: $r" >&2; exit 2 ;;
  esac
done
echo "callgrind outputs in $OUT"
