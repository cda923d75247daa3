#!/usr/bin/env bash
# A local fleet on loopback: redis-server, nats-server, three gateway pods (gw-1, gw-2, gw-3)
# serving the demo page, and HAProxy in front of them when it is installed, for trying the demo,
# the fleet page, drains and resumes by hand.
#
#   scripts/fleet.sh start          start what is not running (builds the gateway first)
#   scripts/fleet.sh status         what runs, the fleet table, the URLs of the demo and fleet pages
#   scripts/fleet.sh stop           stop everything (gateways drain first: SIGTERM)
#   scripts/fleet.sh stop-pod N     SIGTERM pod gw-N: it drains, its clients resume elsewhere
#   scripts/fleet.sh kill-pod N     SIGKILL pod gw-N: a crash, no close frames
#   scripts/fleet.sh start-pod N    start pod gw-N again
#   scripts/fleet.sh drain N        POST /admin/drain on gw-N (the pod stays up, drained)
#
# Pod gw-N listens on 127.0.0.1: public 8080+N, admin 9090+N, HAProxy agent-check 9190+N;
# Redis on 6390, NATS on 4230; HAProxy (deploy/haproxy/haproxy-local.cfg: leastconn and
# agent-check) on 8000, its stats on 8404. Processes are tracked by PID files in target/fleet/
# (logs there too). Settings (environment):
#   FLEET_DIR          state directory (default target/fleet)
#   FLEET_PODS         number of pods (default 3; HAProxy only runs with 3)
#   FLEET_PUBLIC_BASE, FLEET_ADMIN_BASE, FLEET_AGENT_BASE   port bases (8080, 9090, 9190)
#   FLEET_REDIS_PORT, FLEET_NATS_PORT                        (6390, 4230)
#   FLEET_LB_PORT, FLEET_LB_STATS_PORT                       HAProxy (8000, 8404)
#   FLEET_HAPROXY      1: require HAProxy, 0: none, auto (default): when installed
#   GATEWAY_BIN        gateway binary to run (default: target/debug/gateway, built by cargo)
#   REDIS_SERVER_BIN, NATS_SERVER_BIN                        server binaries (else .venv/bin, PATH)
#   GATEWAY_*          passed through to every pod (e.g. GATEWAY_REBALANCE_RATE=0)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

state=${FLEET_DIR:-target/fleet}
case $state in /*) ;; *) state="$root/$state" ;; esac
pods=${FLEET_PODS:-3}
public_base=${FLEET_PUBLIC_BASE:-8080}
admin_base=${FLEET_ADMIN_BASE:-9090}
agent_base=${FLEET_AGENT_BASE:-9190}
redis_port=${FLEET_REDIS_PORT:-6390}
nats_port=${FLEET_NATS_PORT:-4230}
lb_port=${FLEET_LB_PORT:-8000}
lb_stats_port=${FLEET_LB_STATS_PORT:-8404}
want_haproxy=${FLEET_HAPROXY:-auto}
host=127.0.0.1

die() { echo "fleet: $*" >&2; exit 1; }

find_bin() { # name env-var hint
  local name=$1 var=$2 hint=$3
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  if [ -x "$root/.venv/bin/$name" ]; then echo "$root/.venv/bin/$name"; return; fi
  command -v "$name" 2>/dev/null || die "$name not found (\$$var, .venv/bin, PATH): $hint"
}

gateway_bin() {
  if [ -n "${GATEWAY_BIN:-}" ]; then
    [ -x "$GATEWAY_BIN" ] || die "GATEWAY_BIN=$GATEWAY_BIN is not executable"
    echo "$GATEWAY_BIN"; return
  fi
  cargo build -q -p gateway >&2 || die "cargo build -p gateway failed"
  echo "$root/target/debug/gateway"
}

pidfile() { echo "$state/$1.pid"; }

# Running = the PID file's process exists and still runs the program it was started with.
running() { # name program
  local f pid
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    [[ $cmdline == *"$2"* ]] || return 1
  fi
}

program_of() {
  case $1 in redis) echo redis-server ;; nats) echo nats-server ;; haproxy) echo haproxy ;; *) echo gateway ;; esac
}

use_haproxy() {
  case $want_haproxy in
    0 | no | false) return 1 ;;
    1 | yes | true)
      [ "$pods" -eq 3 ] || die "HAProxy needs FLEET_PODS=3 (deploy/haproxy/haproxy-local.cfg has three servers)"
      command -v haproxy >/dev/null || die "haproxy not found: apt-get install haproxy" ;;
    *) [ "$pods" -eq 3 ] && command -v haproxy >/dev/null ;;
  esac
}

port_open() { (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; }

wait_for() { # description seconds command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
  [ -n "$what" ] || true
}

ready() { curl -fsS -o /dev/null --max-time 1 "http://$host:$1/readyz" 2>/dev/null; }

launch() { # name command...
  local name=$1; shift
  nohup "$@" >>"$state/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

start_redis() {
  running redis redis-server && return
  port_open "$redis_port" && die "port $redis_port is taken (FLEET_REDIS_PORT)"
  launch redis "$(find_bin redis-server REDIS_SERVER_BIN 'apt-get install redis-server')" \
    --port "$redis_port" --bind "$host" --save '' --appendonly no
  wait_for redis 10 port_open "$redis_port" || die "redis-server did not start: $state/redis.log"
}

start_nats() {
  running nats nats-server && return
  port_open "$nats_port" && die "port $nats_port is taken (FLEET_NATS_PORT)"
  launch nats "$(find_bin nats-server NATS_SERVER_BIN 'scripts/test.sh installs it in .venv')" \
    -a "$host" -p "$nats_port"
  wait_for nats 10 port_open "$nats_port" || die "nats-server did not start: $state/nats.log"
}

start_pod() { # N binary
  local n=$1 bin=$2 name="gw-$1"
  running "$name" gateway && return
  local port=$((public_base + n)) admin=$((admin_base + n)) agent=$((agent_base + n))
  port_open "$port" && die "port $port is taken (FLEET_PUBLIC_BASE)"
  port_open "$admin" && die "port $admin is taken (FLEET_ADMIN_BASE)"
  local extra=()
  # Captured, not piped into `grep -q`: grep quitting early would SIGPIPE the help under pipefail.
  local help
  help=$("$bin" --help 2>/dev/null || true)
  if [[ $help == *--agent-listen* ]]; then
    extra+=(--agent-listen "$host:$agent")
  fi
  GATEWAY_POD_NAME=$name \
  GATEWAY_PRESENCE=${GATEWAY_PRESENCE:-true} \
  GATEWAY_JOIN_LEAVE=${GATEWAY_JOIN_LEAVE:-true} \
  GATEWAY_LISTEN=$host:$port \
  GATEWAY_ADMIN_LISTEN=$host:$admin \
  GATEWAY_REDIS_URL=redis://$host:$redis_port \
  GATEWAY_NATS_URL=nats://$host:$nats_port \
    launch "$name" "$bin" --demo "${extra[@]}"
}

# deploy/haproxy/haproxy-local.cfg with this fleet's ports.
start_haproxy() {
  use_haproxy || return 0
  running haproxy haproxy && return
  port_open "$lb_port" && die "port $lb_port is taken (FLEET_LB_PORT)"
  local cfg="$state/haproxy.cfg" n sed_args=()
  for n in 1 2 3; do
    sed_args+=(-e "s/127\.0\.0\.1:808$n /$host:$((public_base + n)) /")
    sed_args+=(-e "s/agent-port 919$n /agent-port $((agent_base + n)) /")
  done
  sed "${sed_args[@]}" \
    -e "s/bind 127\.0\.0\.1:8000\$/bind $host:$lb_port/" \
    -e "s/bind 127\.0\.0\.1:8404\$/bind $host:$lb_stats_port/" \
    deploy/haproxy/haproxy-local.cfg >"$cfg"
  launch haproxy haproxy -db -f "$cfg"
  wait_for haproxy 10 port_open "$lb_port" || die "haproxy did not start: $state/haproxy.log"
}

fleet_size() {
  curl -fsS --max-time 1 "http://$host:$((admin_base + 1))/admin/cluster" 2>/dev/null |
    grep -o '"heartbeat_age_ms"' | wc -l
}

wait_pod() {
  local n=$1 name="gw-$1"
  wait_for "$name" 30 ready $((public_base + n)) || {
    tail -n 20 "$state/$name.log" >&2 || true
    die "$name is not ready (see $state/$name.log)"
  }
}

stop_one() { # name [signal] [seconds]
  local name=$1 sig=${2:-TERM} secs=${3:-40} f pid
  f=$(pidfile "$name")
  if ! running "$name" "$(program_of "$name")"; then rm -f "$f"; return; fi
  pid=$(cat "$f")
  kill "-$sig" "$pid" 2>/dev/null || true
  if ! wait_for "$name" "$secs" eval "! kill -0 $pid 2>/dev/null"; then
    echo "fleet: $name did not stop in ${secs}s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

urls() {
  local list="" n
  for n in $(seq 1 "$pods"); do list+="${list:+,}ws://$host:$((public_base + n))/ws"; done
  echo "$list"
}

check_pod_arg() {
  [[ ${1:-} =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$pods" ] || die "usage: $0 $cmd N (1..$pods)"
}

status() {
  local all=0 name port
  printf '%-8s %-8s %-8s %s\n' NAME PID STATE ADDRESS
  local names="redis nats"
  for n in $(seq 1 "$pods"); do names+=" gw-$n"; done
  if use_haproxy; then names+=" haproxy"; fi
  for name in $names; do
    case $name in
      redis) port="redis://$host:$redis_port" ;;
      nats) port="nats://$host:$nats_port" ;;
      haproxy) port="http://$host:$lb_port  stats http://$host:$lb_stats_port" ;;
      *) local n=${name#gw-}; port="http://$host:$((public_base + n))  admin http://$host:$((admin_base + n))" ;;
    esac
    if running "$name" "$(program_of "$name")"; then
      printf '%-8s %-8s %-8s %s\n' "$name" "$(cat "$(pidfile "$name")")" running "$port"
    else
      printf '%-8s %-8s %-8s %s\n' "$name" - stopped "$port"; all=1
    fi
  done
  echo
  if running gw-1 gateway && [ -x "${fleet_bin:-}" ]; then
    "$fleet_bin" status --url "http://$host:$((admin_base + 1))" 2>/dev/null || true
    echo
  fi
  if running haproxy haproxy; then
    echo "demo page:  http://$host:$lb_port/   (through HAProxy; WebSocket ws://$host:$lb_port/ws)"
    echo "            http://$host:$((public_base + 1))/?urls=$(urls)   (the pods directly)"
    echo "haproxy:    http://$host:$lb_stats_port/"
  else
    echo "demo page:  http://$host:$((public_base + 1))/?urls=$(urls)"
  fi
  echo "fleet page: http://$host:$((admin_base + 1))/"
  echo "logs:       $state/"
  return $all
}

cmd=${1:-status}
mkdir -p "$state"
case $cmd in
  start)
    bin=$(gateway_bin)
    start_redis
    start_nats
    for n in $(seq 1 "$pods"); do start_pod "$n" "$bin"; done
    for n in $(seq 1 "$pods"); do wait_pod "$n"; done
    start_haproxy
    # Until every pod sees the others' heartbeats (over NATS).
    wait_for fleet 10 eval '[ "$(fleet_size)" -ge "$pods" ]' || echo "fleet: not every pod is in the fleet view yet" >&2
    fleet_bin=$bin
    status
    ;;
  stop)
    stop_one haproxy TERM 10
    for n in $(seq 1 "$pods"); do stop_one "gw-$n" TERM 40 & done
    wait
    stop_one nats TERM 10
    stop_one redis TERM 10
    echo "fleet stopped"
    ;;
  status)
    fleet_bin=${GATEWAY_BIN:-$root/target/debug/gateway}
    status
    ;;
  start-pod)
    check_pod_arg "${2:-}"
    running redis redis-server && running nats nats-server || die "start the fleet first: $0 start"
    start_pod "$2" "$(gateway_bin)"
    wait_pod "$2"
    echo "gw-$2 started"
    ;;
  stop-pod)
    check_pod_arg "${2:-}"
    stop_one "gw-$2" TERM 40
    echo "gw-$2 stopped (drained: its clients resumed on the other pods)"
    ;;
  kill-pod)
    check_pod_arg "${2:-}"
    stop_one "gw-$2" KILL 5
    echo "gw-$2 killed"
    ;;
  drain)
    check_pod_arg "${2:-}"
    curl -fsS -X POST ${GATEWAY_ADMIN_TOKEN:+-H "Authorization: Bearer $GATEWAY_ADMIN_TOKEN"} \
      "http://$host:$((admin_base + $2))/admin/drain"
    echo
    ;;
  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
