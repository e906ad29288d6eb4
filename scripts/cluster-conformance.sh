#!/usr/bin/env bash
# Runs the protocol conformance suite against a two-node chorus cluster (Kafka,
# PostgreSQL, Redis, attachments in an S3 bucket) with WebSocket sessions alternating
# between the nodes, then kills one node with SIGKILL and runs the suite again against
# the survivor.
#
# Needs CHORUS_TEST_KAFKA, CHORUS_TEST_POSTGRES, CHORUS_TEST_REDIS and CHORUS_TEST_S3
# (scripts/test.sh sets them; CHORUS_TEST_S3 is the endpoint of an S3-compatible server
# with a bucket `chorus-test` taking the access key `chorus`, secret `chorus-secret`), a
# chorus binary built with --features kafka (CHORUS_BIN) and the Python environment
# with the suite's requirements (PYTHON). The nodes' files go under a prefix of the
# bucket named after the run, left there (moto, as scripts/test.sh runs it, keeps
# them in memory only).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CHORUS_BIN:=target/debug/chorus}" "${PYTHON:=target/py/bin/python}"
: "${CHORUS_TEST_S3:?the endpoint of an S3-compatible server with a bucket chorus-test (scripts/test.sh starts one)}"

run_id=c$(date +%s)$$
db=chorus_conformance_$run_id
psql -q "$CHORUS_TEST_POSTGRES" -c "CREATE DATABASE $db"
db_url=${CHORUS_TEST_POSTGRES%/*}/$db
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
logs=target/test-logs
mkdir -p "$logs"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    psql -q "$CHORUS_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_node() {
    local id=$1 port=$2
    # The suite signs up hundreds of users from this machine: per-address limits lifted;
    # and it fills a user's attachment quota, which it expects at 40 MiB (conftest.py).
    # Both nodes keep attachments in one bucket, configured through the variables
    # object_store reads, so that a file uploaded through one is read through the other.
    CHORUS_JWT_SECRET=$secret CHORUS_LOG=warn CHORUS_REGISTRATIONS_PER_HOUR=1000000 \
        CHORUS_LOGIN_FAILURES_PER_ADDRESS=1000000 \
        CHORUS_ATTACHMENT_QUOTA_BYTES=$(("${ATTACHMENT_QUOTA_MIB:-40}" * 1024 * 1024)) \
        AWS_ENDPOINT=$CHORUS_TEST_S3 AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=chorus \
        AWS_SECRET_ACCESS_KEY=chorus-secret AWS_ALLOW_HTTP=true \
        AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false "$CHORUS_BIN" serve --node-id "$id" \
        --listen "127.0.0.1:$port" --data-dir "$(mktemp -d)" \
        --log "$CHORUS_TEST_KAFKA" --db "$db_url" --registry "$CHORUS_TEST_REDIS" \
        --files "s3://chorus-test/$run_id" \
        --topic-prefix "$run_id" >"$logs/$run_id-$id.log" 2>&1 &
    pids+=($!)
    # Killing it is part of the test: no job-control notice for that.
    disown $!
}

wait_ready() {
    local port=$1
    for _ in $(seq 300); do
        if "$PYTHON" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$port/readyz', timeout=1).status_code != 200)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "node on port $port did not become ready" >&2
    return 1
}

p1=$(free_port)
start_node n1 "$p1"
p2=$(free_port)
start_node n2 "$p2"
wait_ready "$p1"
wait_ready "$p2"

echo "conformance: two nodes (127.0.0.1:$p1, 127.0.0.1:$p2), sessions alternating, files in s3://chorus-test/$run_id"
CHORUS_URL="http://127.0.0.1:$p1,http://127.0.0.1:$p2" \
    "$PYTHON" -m pytest tests/conformance -q -p no:cacheprovider

kill -9 "${pids[0]}"
echo "conformance: node n1 killed with SIGKILL; the survivor alone"
CHORUS_URL="http://127.0.0.1:$p2" "$PYTHON" -m pytest tests/conformance -q -p no:cacheprovider
