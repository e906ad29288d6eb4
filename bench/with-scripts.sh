#!/usr/bin/env bash
# Chat throughput with a user script on every message against without (issue 4's
# target: at least half). One embedded server and two sets of users: `plain-*` without
# automation, and `scripted-*`, each with an incoming and an outgoing script, so every
# message of theirs runs two scripts (the sender's outgoing one, the recipient's
# incoming one) through both automation stages. Each set is driven in closed loop (every
# user keeps IN_FLIGHT sends outstanding, so the server runs at its peak), alternating
# ROUNDS times so that drift in the machine's load hits both alike; the medians are
# compared.
#
# Usage: bench/with-scripts.sh [OUT_DIR]   (needs `cargo build --release -p chorus --features bench` first)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-scripts}
users=${USERS:-200}
duration=${DURATION:-10}
in_flight=${IN_FLIGHT:-4}
rounds=${ROUNDS:-3}
port=${PORT:-19640}
bin=target/release/chorus
mkdir -p "$out"
data=$(mktemp -d)
# Hundreds of sign-ups from this machine: past the per-address limit, made for people.
CHORUS_REGISTRATIONS_PER_HOUR=1000000 \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
url=http://127.0.0.1:$port
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done

run() { # PREFIX JSON_FILE DURATION
    "$bin" bench --url "$url" --users "$users" --closed-loop --in-flight "$in_flight" \
        --duration "$3" --warmup 2 --user-prefix "$1" --json "$2" >/dev/null
}

# Register both sets (and their conversations), then give the scripted set its scripts.
run plain "$out/setup-plain.json" 1
run scripted "$out/setup-scripted.json" 1
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
for r in $(seq "$rounds"); do
    run plain "$out/without-$r.json" "$duration"
    run scripted "$out/with-$r.json" "$duration"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    return [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1)]
medians = {}
for name, label in (("without", "without scripts"), ("with", "a script on every message")):
    runs = load(name)
    tput = [r["throughput"] for r in runs]
    medians[name] = statistics.median(tput)
    tputs = " ".join("%.0f" % t for t in tput)
    p50s = " ".join("%.1f" % r["p50_ms"] for r in runs)
    delivered = sum(r["delivered"] for r in runs)
    expected = sum(r["expected"] for r in runs)
    errors = sum(sum(r["errors"].values()) for r in runs)
    print(f"{label:26} deliveries/s {tputs} (median {medians[name]:.0f}); p50 ms {p50s}; "
          f"delivered {delivered}/{expected}; errors {errors}")
print(f"ratio of medians {medians['with'] / medians['without']:.2f}")
PY
