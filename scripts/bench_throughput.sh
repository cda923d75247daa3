# Publish throughput (sourced by bench.sh, which provides start_gateway, find_nats, wait_port,
# cleanup, PIDS, OUT, ROOT, WSLOAD): messages/s into the system with 1, 100 and 10,000 topics,
# 1 and 3 pods, on a single Redis and on a 3-master Redis Cluster, next to the store's own
# limit: redis-benchmark running the same append script (EVALSHA, same keys and args) on the
# same Redis in the same sitting. Each figure is repeated $THROUGHPUT_REPEATS times.
#
# Many topics in redis-benchmark: it replaces every `__rand_int__` with a random number of its
# own, so one call's keys cannot all name one random topic. The history stream (the key that
# grows with the topic count: a capped stream per topic) is the random one; the seq, epoch and
# ack keys are shared, one counter for all, so the ids XADD writes keep increasing in every
# stream. Same commands, same key count, the same number of streams as topics. A Cluster
# refuses keys of different slots (CROSSSLOT), so there each master is benchmarked on its own
# with one topic it owns, all masters at once, and the limit is their sum.

THROUGHPUT_REPEATS=${THROUGHPUT_REPEATS:-2}
THROUGHPUT_SECONDS=${THROUGHPUT_SECONDS:-8}
THROUGHPUT_TOPICS=${THROUGHPUT_TOPICS:-"1 100 10000"}
PAYLOAD='"'$(printf 'x%.0s' $(seq 1 100))'"'

redis_cpu() { # PORT...: used_cpu_sys + used_cpu_user summed over the nodes
  local total=0 port
  for port in "$@"; do
    total=$(redis-cli -p "$port" INFO cpu | tr -d '\r' |
      awk -F: -v t="$total" '/^used_cpu_(sys|user):/ {t += $2} END {print t}')
  done
  echo "$total"
}

load_append_script() { # PORT: the SHA of prelude + append, as the store builds it
  local source
  source="$(cat "$ROOT/session-store/src/lua/prelude.lua")"$'\n'"$(cat "$ROOT/session-store/src/lua/append.lua")"
  redis-cli -p "$1" SCRIPT LOAD "$source"
}

# store_limit PORT TOPICS TAG [N]: appends/s redis-benchmark gets with the append script on the
# node at PORT (-P 32 over 50 connections; TOPICS history streams), and the Redis CPU
# microseconds each cost. Prints "RPS CPU_US".
store_limit() {
  local port=$1 topics=$2 tag=$3 n=${4:-300000} sha epoch before after rps hist=$3 cpu
  sha=$(load_append_script "$port")
  epoch=$(printf '%012x%04x' "$(date +%s%3N)" 1)
  local r=()
  if [ "$topics" -gt 1 ]; then
    r=(-r "$topics")
    hist="${tag}__rand_int__"
  fi
  before=$(redis_cpu "$port")
  rps=$(redis-benchmark -p "$port" -c 50 -P 32 -n "$n" "${r[@]}" --csv \
    EVALSHA "$sha" 5 "bench:seq:{$tag}" "bench:hist:{$hist}" "bench:epoch:{$tag}" \
    "bench:ack:{$tag}" "bench:pid:{$tag}:-" "$epoch" 600000 strict "$PAYLOAD" 1000 "" 120000 |
    tail -1 | cut -d, -f2 | tr -d '"')
  after=$(redis_cpu "$port")
  echo "$rps $(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.2f", (a - b) * 1e6 / n}')"
}

# A tag whose slot the master at PORT owns.
owned_tag() {
  local i
  for i in $(seq 0 5000); do
    if [ "$(redis-cli -p "$1" SET "probe:{t$i}" 1 2>/dev/null)" = OK ]; then
      echo "t$i"
      return
    fi
  done
  return 1
}

# cluster_limit PORTS...: every master benchmarked at once on a topic it owns; the sum.
cluster_limit() {
  local port files=() f total=0 cpu=0
  for port in "$@"; do
    f="$OUT/limit-$port.txt"
    files+=("$f")
    (store_limit "$port" 1 "$(owned_tag "$port")" 200000 >"$f") &
  done
  wait
  for f in "${files[@]}"; do
    total=$(awk -v t="$total" '{print t + $1}' "$f")
    cpu=$(awk -v c="$cpu" -v n="$#" '{printf "%.2f", c + $2 / n}' "$f")
  done
  echo "$total $cpu"
}

# throughput_runs LABEL REDIS_URL "REDIS_PORTS" LIMIT_FN: 1 and 3 pods x the topic counts.
throughput_runs() {
  local label=$1 url=$2 ports=$3 limit_fn=$4 pods topics rep limit urls pids
  for pods in 1 3; do
    urls=() pids=()
    for i in $(seq 0 $((pods - 1))); do
      start_gateway "tp$i" $((18080 + i)) $((19090 + i)) --redis-url "$url" \
        --nats-url nats://127.0.0.1:14222 --rebalance-rate 0
      urls+=(--url "ws://127.0.0.1:$((18080 + i))/ws")
      pids+=(--gateway-pid "$GW_PID")
    done
    sleep 2
    for topics in $THROUGHPUT_TOPICS; do
      for rep in $(seq 1 "$THROUGHPUT_REPEATS"); do
        read -r limit cpu <<<"$($limit_fn "$topics")"
        echo "store limit [$label, $topics topics]: $limit appends/s, $cpu us Redis CPU each (redis-benchmark)"
        "$WSLOAD" throughput "${urls[@]}" "${pids[@]}" $(printf -- '--redis 127.0.0.1:%s ' $ports) \
          --topics "$topics" --publishers 32 --window 32 --duration "$THROUGHPUT_SECONDS" \
          --store-limit "$limit" --store-cpu-us "$cpu" --label "$label" \
          --json "$OUT/throughput-$label-${pods}pods-${topics}topics-r$rep.json"
      done
    done
    for pid in "${PIDS[@]}"; do
      # Stop the gateways only; the backends serve the next round.
      case " $BACKEND_PIDS " in
        *" $pid "*) ;;
        *) kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true ;;
      esac
    done
    sleep 1
  done
}

# One publishing connection, 1 vs 32 publishes in flight (`--window`): what pipelining buys a
# single connection (before it, every publish waited for its round trips).
single_connection_runs() {
  local window rep
  start_gateway tp0 18080 19090 --redis-url redis://127.0.0.1:16379 \
    --nats-url nats://127.0.0.1:14222 --rebalance-rate 0
  sleep 2
  for rep in $(seq 1 "$THROUGHPUT_REPEATS"); do
    for window in 1 32; do
      "$WSLOAD" throughput --url ws://127.0.0.1:18080/ws --gateway-pid "$GW_PID" \
        --redis 127.0.0.1:16379 --topics 100 --publishers 1 --window "$window" \
        --duration "$THROUGHPUT_SECONDS" --label "one-connection-window-$window" \
        --json "$OUT/throughput-one-connection-window$window-r$rep.json"
    done
  done
  kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
}

single_limit() { store_limit 16379 "$1" "b"; }
cluster3_limit() { cluster_limit 16401 16402 16403; }

throughput() {
  redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  PIDS+=("$!")
  "$(find_nats)" -a 127.0.0.1 -p 14222 >"$OUT/nats.log" 2>&1 &
  PIDS+=("$!")
  wait_port 16379
  wait_port 14222
  local port
  for port in 16401 16402 16403; do
    rm -f "$OUT/nodes-$port.conf"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --cluster-enabled yes \
      --cluster-config-file "$OUT/nodes-$port.conf" >"$OUT/redis-$port.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$port"
  done
  BACKEND_PIDS="${PIDS[*]}"
  redis-cli --cluster create 127.0.0.1:16401 127.0.0.1:16402 127.0.0.1:16403 \
    --cluster-replicas 0 --cluster-yes >"$OUT/cluster-create.log"
  until [[ $(redis-cli -p 16401 CLUSTER INFO) == *cluster_state:ok* ]]; do sleep 0.2; done
  sleep 1
  single_connection_runs
  throughput_runs single redis://127.0.0.1:16379 "16379" single_limit
  THROUGHPUT_TOPICS=${THROUGHPUT_CLUSTER_TOPICS:-$THROUGHPUT_TOPICS} throughput_runs cluster3 \
    "redis-cluster://127.0.0.1:16401?node=127.0.0.1:16402&node=127.0.0.1:16403" \
    "16401 16402 16403" cluster3_limit
  cleanup
}
