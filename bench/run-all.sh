#!/usr/bin/env bash
# Every side-by-side figure of BENCHMARKS.md, with one command: chorus, ejabberd
# (bench/ejabberd/setup.sh) routing only, ejabberd archiving every message
# (`ejabberd-mam`: mod_mam, the peer for a server that stores) and the bare relay
# (chorus-relay) on this machine.
#
#   bench/run-all.sh                  # everything; JSON reports under target/bench/
#   SKIP_IDLE=1 bench/run-all.sh      # only the 1:1 rate sweep
#   SKIP_RATE=1 bench/run-all.sh      # only idle memory
#   SKIP_GROUP=1 bench/run-all.sh     # without the group fan-out sweep
#   SKIP_BUILD=1 bench/run-all.sh     # with the release binaries already built
#   SERVERS="chorus relay" RATES="1000 5000" IDLE_SIZES=5000 bench/run-all.sh
#
# Idle memory: each server is started fresh for each size, then CLIENT_PROCS load
# generator processes (one process may hold at most ~19.9k sockets here) open the
# connections from 127.0.0.1..8 and hold them; the server's RSS growth divided by the
# established connections is the cost of one idle connection. Rate sweep: 200 users in
# 100 direct pairs, open loop, 10 s measured after 2 s warm-up, rates rising until
# the server saturates (under 99% delivered, or p99 over a second). Group fan-out:
# GROUP_USERS users in groups of each GROUP_SIZES (MUC rooms on ejabberd), open loop,
# messages per second chosen for each of GROUP_DELIVERIES deliveries per second, the
# same stopping rule. Then bench/plot.py draws docs/bench/*.png and prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/target/bench}
SERVERS=${SERVERS:-"chorus ejabberd ejabberd-mam relay"}
RATES=${RATES:-"1000 2000 5000 10000 15000 20000 30000 40000"}
IDLE_SIZES=${IDLE_SIZES:-"5000 10000 19000"}
GROUP_SIZES=${GROUP_SIZES:-"100 1000"}
GROUP_DELIVERIES=${GROUP_DELIVERIES:-"10000 20000 50000 100000 200000 500000"}
GROUP_USERS=${GROUP_USERS:-1000}
CLIENT_PROCS=${CLIENT_PROCS:-4}
USERS=${USERS:-200}
DURATION=${DURATION:-10}
CHORUS_PORT=19603
RELAY_PORT=19700
EJABBERD_PORT=${EJABBERD_BENCH_PORT:-15280}
EJABBERD_MAM_PORT=${EJABBERD_MAM_BENCH_PORT:-15281}
export EJABBERD_BENCH_PORT=$EJABBERD_PORT
BENCH=$ROOT/target/release/chorus
RELAY=$ROOT/target/release/chorus-relay
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --features kafka,bench -p chorus
  cargo build --release -p chorus-bench --bin chorus-relay
fi
bench/ejabberd/setup.sh install

SERVER_PID=
CHORUS_DATA=$OUT/chorus-data
cat >"$OUT/chorus.toml" <<TOML
[limits]
# The sweep offers up to 200 sends/s per user; the default limit is 100/s.
rate_per_sec = 100000
rate_burst = 100000
# Every generator connects from 127.0.0.1..8: the per-address cap (1000) is for people.
max_connections_per_address = 0

[auth]
# Every generator signs its users up and in from this machine: the per-address limits
# (20 sign-ups an hour, 30 sign-ins in flight) are for people, not for load tests.
registrations_per_hour = 1000000
login_failures_per_address = 1000000
TOML

# ejabberd_of SERVER ARGS...: bench/ejabberd/setup.sh for the routing-only node or the
# archiving one (its own port, directory and node name).
ejabberd_of() {
  if [ "$1" = ejabberd-mam ]; then
    EJABBERD_BENCH_MAM=1 EJABBERD_BENCH_PORT=$EJABBERD_MAM_PORT \
      EJABBERD_BENCH_DIR=/tmp/chorus-bench-ejabberd-mam EJABBERD_BENCH_NODE=chorusbench-mam@localhost \
      bench/ejabberd/setup.sh "${@:2}"
  else
    bench/ejabberd/setup.sh "${@:2}"
  fi
}

url_of() {
  case $1 in
    chorus) echo "http://127.0.0.1:$CHORUS_PORT" ;;
    ejabberd) echo "http://127.0.0.1:$EJABBERD_PORT" ;;
    ejabberd-mam) echo "http://127.0.0.1:$EJABBERD_MAM_PORT" ;;
    relay) echo "http://127.0.0.1:$RELAY_PORT" ;;
  esac
}
port_of() { url_of "$1" | sed 's/.*://'; }
protocol_of() {
  case $1 in chorus) echo chorus ;; ejabberd*) echo xmpp ;; relay) echo relay ;; esac
}

wait_port() {
  for _ in $(seq 200); do
    if ss -Hltn "sport = :$1" | grep -q .; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

start_server() {
  case $1 in
    chorus)
      "$BENCH" serve --listen "127.0.0.1:$CHORUS_PORT" --data-dir "$CHORUS_DATA" \
        --config "$OUT/chorus.toml" >"$OUT/chorus-serve.log" 2>&1 &
      SERVER_PID=$!
      ;;
    relay)
      "$RELAY" --listen "127.0.0.1:$RELAY_PORT" >"$OUT/relay.log" 2>&1 &
      SERVER_PID=$!
      ;;
    ejabberd*)
      ejabberd_of "$1" start >/dev/null
      SERVER_PID=$(ejabberd_of "$1" pid)
      ;;
  esac
  wait_port "$(port_of "$1")"
  if [ "$1" = chorus ]; then
    until curl -fs -o /dev/null "$(url_of chorus)/readyz"; do sleep 0.2; done
  fi
}

stop_server() {
  case $1 in
    ejabberd*) ejabberd_of "$1" stop ;;
    *)
      kill "$SERVER_PID" 2>/dev/null || true
      wait "$SERVER_PID" 2>/dev/null || true
      ;;
  esac
  SERVER_PID=
}
trap 'if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi; ejabberd_of ejabberd stop; ejabberd_of ejabberd-mam stop' EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

# bench SERVER ARGS...: the load generator against SERVER. It replaces the shell it
# runs in, so that a background `bench ... &` gives the generator's own pid to kill.
bench() {
  local server=$1
  shift
  exec "$BENCH" bench --protocol "$(protocol_of "$server")" --url "$(url_of "$server")" "$@"
}

idle() {
  local server=$1 size=$2 per=$(($2 / CLIENT_PROCS)) p pids=()
  start_server "$server"
  sleep 2
  local before
  before=$(rss_kib "$SERVER_PID")
  for p in $(seq 0 $((CLIENT_PROCS - 1))); do
    bench "$server" --idle --users "$per" --user-prefix "idle$p" --duration 60 \
      --source-addrs 8 --connect-concurrency 100 --token-cache "$OUT/idle$p.tokens" \
      --json "$OUT/idle-$server-$size-$p.json" >"$OUT/idle-$server-$size-$p.log" 2>&1 &
    pids+=($!)
  done
  local want=$((per * CLIENT_PROCS)) n=0
  for _ in $(seq 600); do
    n=$(established "$(port_of "$server")")
    [ "$n" -ge "$want" ] && break
    sleep 0.5
  done
  sleep 5
  n=$(established "$(port_of "$server")")
  local after
  after=$(rss_kib "$SERVER_PID")
  # Divided by the sessions asked for: the established count also holds the HTTP
  # keep-alive connections of the XMPP users' registration.
  printf '{"server":"%s","connections":%d,"established":%d,"rss_before_kib":%d,"rss_after_kib":%d,"kib_per_connection":%.2f}\n' \
    "$server" "$want" "$n" "$before" "$after" "$(echo "($after - $before) / $want" | bc -l)" \
    | tee "$OUT/idle-$server-$size.json"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  stop_server "$server"
  sleep 3
}

if [ -z "${SKIP_IDLE:-}" ]; then
  largest=$(echo "$IDLE_SIZES" | tr ' ' '\n' | sort -n | tail -1)
  for server in $SERVERS; do
    if [ "$server" != relay ]; then
      # Users first, on a server that is then restarted: registering leaves memory
      # with the allocator that the sessions would reuse and hide.
      start_server "$server"
      for p in $(seq 0 $((CLIENT_PROCS - 1))); do
        (bench "$server" --idle --users $((largest / CLIENT_PROCS)) --user-prefix "idle$p" \
          --duration 1 --token-cache "$OUT/idle$p.tokens" >/dev/null)
      done
      stop_server "$server"
    fi
    for size in $IDLE_SIZES; do idle "$server" "$size"; done
  done
fi

# summary FILE: one line of a bench report.
summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("%.2f%% delivered, %.0f deliveries/s, p50 %s ms, p99 %s ms, generator lag p99 %s ms, server CPU %s us/send"
      % (r["delivered_percent"], r["throughput"], r["p50_ms"], r["p99_ms"], r.get("generator_lag_p99_ms"),
         r.get("server_cpu_us_per_send")))
PY
}

# saturated FILE: under 99% delivered or p99 over a second.
saturated() {
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["delivered_percent"] < 99 or r["p99_ms"] > 1000 else 1)' "$1"
}

# The sweeps run every server at once and take each point in turn, so that a noisy
# neighbour on this shared machine hurts them alike; a server that fails or saturates
# leaves the sweep.
declare -A UP
start_all() {
  for server in $SERVERS; do
    start_server "$server"
    UP[$server]=$SERVER_PID
  done
  SERVER_PID=
}
stop_all() {
  for server in $SERVERS; do
    SERVER_PID=${UP[$server]}
    stop_server "$server"
  done
}

# point SERVER NAME LABEL ARGS...: one generator run with ARGS, its report in
# $OUT/NAME.json and its output in $OUT/NAME.log; true if SERVER stays in the sweep.
# The report has the server's CPU per message sent (its pid, from start_all).
point() {
  local server=$1 name=$2 label=$3
  shift 3
  local json=$OUT/$name.json pid=${UP[$server]:-}
  rm -f "$json"
  (bench "$server" "$@" ${pid:+--server-pid "$pid"} --json "$json" >"$OUT/$name.log" 2>&1) || true
  if [ ! -f "$json" ]; then
    echo "$server $label: failed, see $OUT/$name.log"
    return 1
  fi
  echo "$server $label: $(summary "$json")"
  ! saturated "$json"
}

if [ -z "${SKIP_RATE:-}" ]; then
  start_all
  live=$SERVERS
  for rate in $RATES; do
    next=""
    for server in $live; do
      if point "$server" "rate-$server-$rate" "$rate msg/s" --users "$USERS" --rate "$rate" \
        --duration "$DURATION" --warmup 2 --user-prefix rate --token-cache "$OUT/rate.tokens"; then
        next="$next $server"
      fi
    done
    live=$next
    [ -n "$live" ] || break
  done
  stop_all
fi

if [ -z "${SKIP_GROUP:-}" ]; then
  # A message to a group of N is N deliveries (an XMPP room, like chorus, echoes it to
  # its sender).
  start_all
  for size in $GROUP_SIZES; do
    live=$SERVERS
    for deliveries in $GROUP_DELIVERIES; do
      next=""
      for server in $live; do
        if point "$server" "group$size-$server-$deliveries" \
          "groups of $size, $deliveries deliveries/s" --users "$GROUP_USERS" \
          --conversation group --group-size "$size" --rate $((deliveries / size)) \
          --duration "$DURATION" --warmup 2 --user-prefix group \
          --token-cache "$OUT/group.tokens"; then
          next="$next $server"
        fi
      done
      live=$next
      [ -n "$live" ] || break
    done
  done
  stop_all
fi

if [ ! -x target/plot-venv/bin/python ]; then
  python3 -m venv target/plot-venv
  target/plot-venv/bin/pip install -q matplotlib
fi
target/plot-venv/bin/python bench/plot.py "$OUT" docs/bench
