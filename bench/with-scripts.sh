#!/usr/bin/env bash
# Chat throughput with a user script on every message against without (issue 4's
# target: at least half). One embedded server; the same users and conversations are
# driven twice in closed loop (each user keeps IN_FLIGHT sends outstanding, so the
# server runs at its peak): first with no automation, then after every user uploaded an
# incoming and an outgoing script, so every message runs two scripts (the sender's
# outgoing one and the recipient's incoming one) through both automation stages.
#
# Usage: bench/with-scripts.sh [OUT_DIR]   (needs `cargo build --release` first)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-scripts}
users=${USERS:-200}
duration=${DURATION:-10}
in_flight=${IN_FLIGHT:-4}
port=${PORT:-19640}
bin=target/release/chorus
mkdir -p "$out"
data=$(mktemp -d)
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
url=http://127.0.0.1:$port
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done

run() {
    "$bin" bench --url "$url" --users "$users" --closed-loop --in-flight "$in_flight" \
        --duration "$duration" --warmup 2 --user-prefix scripted --json "$out/$1.json"
}

run without
script='export function onIncoming(msg, ctx) { if (msg.body.startsWith("!count")) return { reply: String(msg.body.length) }; }
export function onOutgoing(msg, ctx) { if (msg.body.includes("password=")) return { drop: "no passwords" }; }'
body=$(python3 -c 'import json,sys; print(json.dumps({"name": "bench", "hooks": ["incoming", "outgoing"], "source": sys.argv[1]}))' "$script")
for i in $(seq 0 $((users - 1))); do
    token=$(curl -sf -XPOST "$url/api/v1/auth/login" -H 'content-type: application/json' \
        -d "{\"username\":\"scripted-$i\",\"password\":\"bench-password\"}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    curl -sf -XPOST "$url/api/v1/scripts" -H "authorization: Bearer $token" \
        -H 'content-type: application/json' -d "$body" >/dev/null
done
run with
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
a, b = (json.load(open(f"{out}/{n}.json")) for n in ("without", "with"))
for name, r in (("without scripts", a), ("a script on every message", b)):
    print(f"{name:28} {r['throughput']:10.0f} deliveries/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}")
print(f"ratio {b['throughput'] / a['throughput']:.2f}")
PY
