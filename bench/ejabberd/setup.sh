#!/usr/bin/env bash
# ejabberd (Debian's package) as the peer of `chorus bench --protocol xmpp`.
#
#   bench/ejabberd/setup.sh install   apt-get install ejabberd (the system service is
#                                     left alone: this script runs its own node)
#   bench/ejabberd/setup.sh start     start a node on 127.0.0.1:$EJABBERD_BENCH_PORT
#                                     (WebSocket at /ws, HTTP API at /api)
#   bench/ejabberd/setup.sh stop      stop it
#   bench/ejabberd/setup.sh pid       print the node's beam.smp process id (for --server-pid)
#   bench/ejabberd/setup.sh reset     stop it and delete its database (users, rooms)
#
# With EJABBERD_BENCH_MAM=1 the node archives every message (mod_mam, `default: always`,
# in MUC rooms too) in PostgreSQL (database $EJABBERD_BENCH_PG_DB on 127.0.0.1:5432 as
# postgres, created afresh from ejabberd's own schema at each start): the peer for a
# server that stores every message, as chorus does. ejabberd's default archive, Mnesia
# (a DETS file), fell behind at 500 msg/s here. Give the node its own
# EJABBERD_BENCH_DIR, EJABBERD_BENCH_PORT and EJABBERD_BENCH_NODE to keep it apart from
# the routing-only one.
#
# The node is named chorusbench@localhost and keeps its configuration, database and
# logs under $EJABBERD_BENCH_DIR, so it does not clash with a system ejabberd or
# another Erlang node (RabbitMQ shares epmd happily). It runs as the ejabberd user
# with the open-files limit raised: ejabberdctl would otherwise switch user with su,
# which drops the limit to 1024.
#
# Then, e.g.:
#   chorus bench --protocol xmpp --url http://127.0.0.1:15280 --users 200 --rate 2000
set -euo pipefail

PORT=${EJABBERD_BENCH_PORT:-15280}
DIR=${EJABBERD_BENCH_DIR:-/tmp/chorus-bench-ejabberd}
NODE=${EJABBERD_BENCH_NODE:-chorusbench@localhost}
PG_DB=${EJABBERD_BENCH_PG_DB:-ejabberd_bench_mam}
HERE=$(cd "$(dirname "$0")" && pwd)

ctl() {
  ulimit -n "$(ulimit -Hn)"
  setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
    env HOME="$DIR" ejabberdctl --node "$NODE" --config-dir /etc/ejabberd \
    --ctl-config "$DIR/ejabberdctl.cfg" --config "$DIR/ejabberd.yml" \
    --spool "$DIR/spool" --logs "$DIR/logs" "$@"
}

install() {
  if ! command -v ejabberdctl >/dev/null || ! dpkg -s erlang-p1-pgsql >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y ejabberd erlang-p1-pgsql
  fi
}

configure() {
  mkdir -p "$DIR/spool" "$DIR/logs"
  sed "s/@PORT@/$PORT/" "$HERE/ejabberd.yml" >"$DIR/ejabberd.yml"
  if [ -n "${EJABBERD_BENCH_MAM:-}" ]; then
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $PG_DB" -c "CREATE DATABASE $PG_DB"
    psql -q -h 127.0.0.1 -U postgres -d "$PG_DB" -f /usr/share/ejabberd/sql/pg.sql >/dev/null
    sed -i 's/^      mam: false$/      mam: true/' "$DIR/ejabberd.yml"
    printf '  mod_mam:\n    db_type: sql\n    default: always\n' >>"$DIR/ejabberd.yml"
    printf 'sql_type: pgsql\nsql_server: 127.0.0.1\nsql_port: 5432\nsql_database: %s\nsql_username: postgres\nsql_password: ""\nsql_pool_size: 10\n' \
      "$PG_DB" >>"$DIR/ejabberd.yml"
  fi
  cat >"$DIR/ejabberdctl.cfg" <<CFG
ERL_EPMD_ADDRESS=127.0.0.1
INET_DIST_INTERFACE=127.0.0.1
ERL_MAX_PORTS=65536
ERL_PROCESSES=1000000
# Schedulers sleep instead of spinning when idle: the load generator shares the cores.
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 +sbwt none +sbwtdcpu none +sbwtdio none"
EJABBERD_PID_PATH=$DIR/ejabberd.pid
CFG
  if [ ! -f "$DIR/.erlang.cookie" ]; then
    head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DIR/.erlang.cookie"
    chmod 400 "$DIR/.erlang.cookie"
  fi
  chown -R ejabberd:ejabberd "$DIR"
}

pid() {
  pgrep -f -- "-sname $NODE|-name $NODE" | while read -r p; do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = beam.smp ] && echo "$p"
  done | head -1 || true
}

start() {
  install
  if [ -n "$(pid)" ]; then
    echo "ejabberd $NODE already running (pid $(pid))"
    return
  fi
  if ss -Hltn "sport = :$PORT" | grep -q .; then
    echo "port $PORT is taken: set EJABBERD_BENCH_PORT" >&2
    exit 1
  fi
  configure
  ctl start
  for _ in $(seq 120); do
    if curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -d '{}' \
      "http://127.0.0.1:$PORT/api/status" 2>/dev/null; then
      echo "ejabberd $NODE on http://127.0.0.1:$PORT (ws /ws, api /api), pid $(pid)"
      return
    fi
    sleep 0.5
  done
  echo "ejabberd did not start; see $DIR/logs" >&2
  tail -n 20 "$DIR/logs/error.log" >&2 || true
  exit 1
}

stop() {
  [ -n "$(pid)" ] || return 0
  ctl stop >/dev/null || true
  ctl stopped >/dev/null 2>&1 || true
  local p
  p=$(pid)
  if [ -n "$p" ]; then kill "$p"; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  pid) pid ;;
  reset) stop; rm -rf "$DIR" ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
