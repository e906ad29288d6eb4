#!/usr/bin/env bash
# Attachments side by side with the floor (BENCHMARKS.md, "Attachments: 20 MiB up and
# down, and thumbnails"): upload and download of one SIZE_MIB random file through
# chorus, for each object store backend, each repetition next to the same bytes
# copied without chorus:
#
#   embedded  chorus serve --data-dir D (files in D/files)   floor: cp into a directory
#             on the same file system; cat of the object chorus stored > /dev/null
#   s3        chorus serve --files s3://BUCKET/chorus on a    floor: curl PUT of the same
#             moto server (S3-compatible, Python)             bytes to moto; curl GET of
#                                                             the object chorus stored
#   (s3 also: a multipart upload of the same bytes in 5 MiB parts by curl, two parts in
#   flight as chorus does; context for the table, not its floor)
#
# Needs curl, python3, ss, and a release chorus (built here with
# `cargo build --release -p chorus` unless CHORUS_BIN names one) and moto's server
# (target/py/bin/moto_server if there, else installed here with
# `pip install 'moto[server]==5.1.*'` into the venv target/moto-venv).
#
#   bench/attachments.sh                          # both backends, REPS=7
#   CHORUS_BIN=target/release/chorus REPS=9 bench/attachments.sh
#   BACKENDS=embedded SIZE_MIB=100 bench/attachments.sh
#
# Each backend gets a fresh server, one untimed round, then REPS timed rounds; in a
# round chorus and the floor take turns (who goes first alternates). Curl transfers
# are timed by curl (`%{time_total}`), cp and cat by the shell around the command (so
# they include starting the process, printed as "process start" for scale). Every
# figure is SIZE_MIB divided by a time; the tables give medians, min-max and the
# ratio chorus/floor of the medians. Everything is kept under OUT (default
# target/bench/attachments): the data directories, the floor's copies and the
# servers' logs, on one file system.
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/target/bench/attachments}
REPS=${REPS:-7}
SIZE_MIB=${SIZE_MIB:-20}
BACKENDS=${BACKENDS:-"embedded s3"}
BUCKET=${BUCKET:-chorus-bench}
PART_MIB=5 # chorus_files::PART_BYTES

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
CHORUS_PORT=${CHORUS_PORT:-$(free_port)}
MOTO_PORT=${MOTO_PORT:-$(free_port)}
MOTO_URL=http://127.0.0.1:$MOTO_PORT

if [ -z "${CHORUS_BIN:-}" ]; then
  cargo build --release -p chorus
  CHORUS_BIN=$ROOT/target/release/chorus
fi
case $BACKENDS in *s3*)
  MOTO=${MOTO:-}
  if [ -z "$MOTO" ]; then
    if [ -x "$ROOT/target/py/bin/moto_server" ]; then
      MOTO=$ROOT/target/py/bin/moto_server
    else
      MOTO=$ROOT/target/moto-venv/bin/moto_server
      if [ ! -x "$MOTO" ]; then
        python3 -m venv "$ROOT/target/moto-venv"
        "$ROOT/target/moto-venv/bin/pip" install -q 'moto[server]==5.1.*'
      fi
    fi
  fi
  ;;
esac

rm -rf "$OUT"
mkdir -p "$OUT/floor" "$OUT/parts"
SRC=$OUT/src.bin
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$SRC"
SRC_SHA=$(sha256sum "$SRC" | cut -d' ' -f1)
# The parts of a multipart upload as chorus writes them, and their ETags (MD5).
(cd "$OUT/parts" && split -b "${PART_MIB}M" -d -a 3 "$SRC" part-)
PARTS=("$OUT"/parts/part-*)

cat >"$OUT/chorus.toml" <<TOML
[auth]
# One sign-up per server; lifted as in bench/run-all.sh all the same.
registrations_per_hour = 1000000

[limits]
# Every upload of the run stays stored (unsent uploads go after 24 h): no quota.
attachment_quota_bytes = 1099511627776
max_attachment_bytes = $(( (SIZE_MIB > 25 ? SIZE_MIB : 25) * 1024 * 1024 ))
TOML

CHORUS_PID=
MOTO_PID=
stop_pid() {
  if [ -n "$1" ]; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
trap 'stop_pid "$CHORUS_PID"; stop_pid "$MOTO_PID"' EXIT

wait_port() {
  for _ in $(seq 300); do
    if ss -Hltn "sport = :$1" | grep -q .; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

elapsed() { python3 -c 'import sys; print("%.6f" % (float(sys.argv[2]) - float(sys.argv[1])))' "$1" "$2"; }
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# expect WANT "CODE TIME [SIZE]" WHAT: fails the run unless curl's status is WANT.
# Prints the time.
expect() {
  local code time
  read -r code time _ <<<"$2"
  if [ "$code" != "$1" ]; then
    echo "$3: HTTP $code, wanted $1" >&2
    return 1
  fi
  echo "$time"
}

# Each measure appends one time in seconds to $OUT/times/BACKEND-MEASURE.
record() { echo "$3" >>"$OUT/times/$1-$2"; }

start_chorus() {
  local backend=$1 data=$OUT/$1-data
  mkdir -m 700 -p "$data"
  if [ "$backend" = s3 ]; then
    AWS_ENDPOINT=$MOTO_URL AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=y AWS_REGION=us-east-1 \
      AWS_ALLOW_HTTP=true AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false \
      "$CHORUS_BIN" serve --listen "127.0.0.1:$CHORUS_PORT" --data-dir "$data" \
      --config "$OUT/chorus.toml" --files "s3://$BUCKET/chorus" >"$OUT/chorus-$backend.log" 2>&1 &
  else
    "$CHORUS_BIN" serve --listen "127.0.0.1:$CHORUS_PORT" --data-dir "$data" \
      --config "$OUT/chorus.toml" >"$OUT/chorus-$backend.log" 2>&1 &
  fi
  CHORUS_PID=$!
  wait_port "$CHORUS_PORT"
  until curl -fs -o /dev/null "http://127.0.0.1:$CHORUS_PORT/readyz"; do sleep 0.2; done
}

CHORUS_URL=http://127.0.0.1:$CHORUS_PORT/api/v1
TOKEN=
LAST_ID=

chorus_up() {
  local t
  t=$(expect 201 "$(curl -sS -o "$OUT/up.json" -w '%{http_code} %{time_total}' \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    --data-binary @"$SRC" "$CHORUS_URL/attachments?name=f.bin")" "chorus upload") || {
    cat "$OUT/up.json" >&2
    return 1
  }
  LAST_ID=$(json_field "$OUT/up.json" attachment_id)
  if [ "$(json_field "$OUT/up.json" sha256)" != "$SRC_SHA" ]; then
    echo "chorus upload: the sha256 it reports is not the file's" >&2
    return 1
  fi
  echo "$t"
}

chorus_down() {
  local out
  out=$(curl -sS -o /dev/null -w '%{http_code} %{time_total} %{size_download}' \
    -H "Authorization: Bearer $TOKEN" "$CHORUS_URL/attachments/$1")
  check_size "$out" "chorus download"
  expect 200 "$out" "chorus download"
}

check_size() {
  local size
  read -r _ _ size <<<"$1"
  if [ "$size" != $((SIZE_MIB * 1024 * 1024)) ]; then
    echo "$2: $size bytes, wanted $((SIZE_MIB * 1024 * 1024))" >&2
    return 1
  fi
}

# The floor of the embedded backend: the same bytes through the file system alone.
cp_up() {
  local t0 t1
  t0=$EPOCHREALTIME
  cp "$SRC" "$OUT/floor/copy-$1"
  t1=$EPOCHREALTIME
  elapsed "$t0" "$t1"
}

cat_down() {
  local t0 t1
  t0=$EPOCHREALTIME
  cat "$1" >/dev/null
  t1=$EPOCHREALTIME
  elapsed "$t0" "$t1"
}

# The floor of the S3 backend: the same bytes to and from moto with curl alone.
s3_put() {
  expect 200 "$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' -X PUT \
    -H 'Content-Type: application/octet-stream' -H 'Expect:' --data-binary @"$SRC" \
    "$MOTO_URL/$BUCKET/floor/put-$1")" "S3 PUT"
}

s3_get() {
  local out
  out=$(curl -sS -o /dev/null -w '%{http_code} %{time_total} %{size_download}' "$MOTO_URL/$BUCKET/$1")
  check_size "$out" "S3 GET"
  expect 200 "$out" "S3 GET"
}

# A multipart upload as chorus makes it (create, the parts two at a time, complete),
# by curl, timed around it all (a curl process per request).
s3_multipart() {
  local key=floor/multipart-$1 t0 t1 id n complete
  t0=$EPOCHREALTIME
  id=$(curl -fsS -X POST "$MOTO_URL/$BUCKET/$key?uploads" | sed -n 's:.*<UploadId>\(.*\)</UploadId>.*:\1:p')
  for n in "${!PARTS[@]}"; do echo "$((n + 1)) ${PARTS[$n]}"; done |
    xargs -P 2 -n 2 sh -c 'curl -fsS -o /dev/null -X PUT -H "Expect:" \
      -H "Content-Type: application/octet-stream" --data-binary "@$2" "$0&partNumber=$1"' \
      "$MOTO_URL/$BUCKET/$key?uploadId=$id"
  complete="<CompleteMultipartUpload>"
  for n in "${!PARTS[@]}"; do
    complete+="<Part><PartNumber>$((n + 1))</PartNumber><ETag>\"${ETAGS[$n]}\"</ETag></Part>"
  done
  curl -fsS -o /dev/null -X POST -H 'Content-Type: application/xml' \
    --data-binary "$complete</CompleteMultipartUpload>" "$MOTO_URL/$BUCKET/$key?uploadId=$id"
  t1=$EPOCHREALTIME
  elapsed "$t0" "$t1"
}
ETAGS=()
for part in "${PARTS[@]}"; do ETAGS+=("$(md5sum "$part" | cut -d' ' -f1)"); done

# The object chorus stored for the last upload, for the download floor.
stored_object() {
  case $1 in
    embedded) echo "$OUT/embedded-data/files/attachments/$LAST_ID" ;;
    s3) echo "chorus/attachments/$LAST_ID" ;;
  esac
}

# round BACKEND I: chorus and the floor, up then down; odd rounds chorus first.
round() {
  local backend=$1 i=$2 t order
  if [ $((i % 2)) = 1 ]; then order="chorus floor"; else order="floor chorus"; fi
  for who in $order; do
    case $who-$backend in
      chorus-*) t=$(chorus_up); record "$backend" chorus-up "$t" ;;
      floor-embedded) t=$(cp_up "$i"); record "$backend" floor-up "$t" ;;
      floor-s3)
        t=$(s3_put "$i"); record "$backend" floor-up "$t"
        t=$(s3_multipart "$i"); record "$backend" multipart-up "$t"
        ;;
    esac
  done
  # chorus_up ran in a subshell: the id of the upload is the newest in its answer.
  LAST_ID=$(json_field "$OUT/up.json" attachment_id)
  local object
  object=$(stored_object "$backend")
  for who in $order; do
    case $who-$backend in
      chorus-*) t=$(chorus_down "$LAST_ID"); record "$backend" chorus-down "$t" ;;
      floor-embedded) t=$(cat_down "$object"); record "$backend" floor-down "$t" ;;
      floor-s3) t=$(s3_get "$object"); record "$backend" floor-down "$t" ;;
    esac
  done
  # Like chorus' uploads, the floor's stay (moto refuses an unsigned DELETE).
}

if [ "$(stat -c %d "$OUT/floor")" != "$(stat -c %d "$OUT")" ]; then
  echo "the floor's directory is not on the data directory's file system" >&2
  exit 1
fi

echo "chorus: $CHORUS_BIN ($("$CHORUS_BIN" --version 2>/dev/null || echo '?')), $(nproc) cores," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg), $(curl --version | head -1 | cut -d' ' -f1-2)"
echo "file: $SIZE_MIB MiB from /dev/urandom, sha256 $SRC_SHA; $REPS timed rounds after one untimed"
t0=$EPOCHREALTIME
/bin/true
t1=$EPOCHREALTIME
echo "process start (/bin/true, timed as cp and cat are): $(elapsed "$t0" "$t1") s"
# The digest chorus computes on the way in, for scale: openssl uses the CPU's SHA
# instructions when it has them, as chorus' sha2 does (coreutils' sha256sum may not).
if command -v openssl >/dev/null; then
  for _ in 1 2 3; do
    t0=$EPOCHREALTIME
    openssl dgst -sha256 "$SRC" >/dev/null
    t1=$EPOCHREALTIME
    echo "openssl dgst -sha256 of the file, process start included: $(elapsed "$t0" "$t1") s"
  done
fi

case $BACKENDS in *s3*)
  "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" >"$OUT/moto.log" 2>&1 &
  MOTO_PID=$!
  wait_port "$MOTO_PORT"
  curl -fsS -o /dev/null -X PUT "$MOTO_URL/$BUCKET"
  echo "moto: $("$(dirname "$MOTO")/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?') on $MOTO_URL, bucket $BUCKET"
  ;;
esac

mkdir -p "$OUT/times"
for backend in $BACKENDS; do
  start_chorus "$backend"
  TOKEN=$(curl -fsS -H 'Content-Type: application/json' \
    -d '{"username":"bench","password":"bench-password"}' "$CHORUS_URL/auth/register" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
  # The untimed round, which also checks that the bytes come back whole.
  chorus_up >/dev/null
  LAST_ID=$(json_field "$OUT/up.json" attachment_id)
  curl -fsS -o "$OUT/down.bin" -H "Authorization: Bearer $TOKEN" "$CHORUS_URL/attachments/$LAST_ID"
  if [ "$(sha256sum <"$OUT/down.bin" | cut -d' ' -f1)" != "$SRC_SHA" ]; then
    echo "$backend: the downloaded bytes are not the uploaded ones" >&2
    exit 1
  fi
  rm -f "$OUT/down.bin"
  stored=$(stored_object "$backend")
  if [ "$backend" = embedded ]; then
    [ -f "$stored" ] || { echo "no object at $stored" >&2; exit 1; }
  else
    s3_get "$stored" >/dev/null
  fi
  round "$backend" 0 >/dev/null
  rm -f "$OUT/times/$backend-"*
  for i in $(seq 1 "$REPS"); do
    round "$backend" "$i"
    echo "$backend round $i: $(for m in chorus-up floor-up chorus-down floor-down; do
      printf '%s %.1f ms  ' "$m" "$(echo "$(tail -1 "$OUT/times/$backend-$m") * 1000" | bc -l)"
    done)"
  done
  warnings=$(grep -c -E 'WARN|ERROR' "$OUT/chorus-$backend.log" || true)
  echo "$backend: $warnings WARN/ERROR lines in $OUT/chorus-$backend.log"
  grep -E 'WARN|ERROR' "$OUT/chorus-$backend.log" | head -5 || true
  stop_pid "$CHORUS_PID"
  CHORUS_PID=
done

case $BACKENDS in *s3*)
  pending=$(curl -fsS "$MOTO_URL/$BUCKET?uploads" | python3 -c 'import sys; print(sys.stdin.read().count("<Upload>"))')
  echo "s3: $pending multipart uploads left open in the bucket"
  ;;
esac

python3 - "$OUT/times" "$SIZE_MIB" "$BACKENDS" <<'PY' | tee "$OUT/results.md"
import statistics, sys
times, size, backends = sys.argv[1], float(sys.argv[2]), sys.argv[3].split()
def read(backend, measure):
    try:
        return [float(l) for l in open(f"{times}/{backend}-{measure}")]
    except FileNotFoundError:
        return None
def cell(ts):
    rates = sorted(size / t for t in ts)
    return statistics.median(rates), f"{statistics.median(rates):,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f})"
floors = {"embedded": ("cp", "cat"), "s3": ("curl PUT to moto", "curl GET from moto")}
print(f"\n{size:g} MiB, MiB/s: median (min-max) of {len(read(backends[0], 'chorus-up'))} rounds\n")
print("| backend | direction | chorus | floor | floor is | chorus / floor |")
print("|---|---|---|---|---|---|")
for b in backends:
    for d, (i, label) in (("up", (0, "upload")), ("down", (1, "download"))):
        c, f = read(b, f"chorus-{d}"), read(b, f"floor-{d}")
        (cm, cs), (fm, fs) = cell(c), cell(f)
        print(f"| {b} | {label} | {cs} | {fs} | {floors[b][i]} | {cm / fm:.2f} |")
mp = read("s3", "multipart-up") if "s3" in backends else None
if mp:
    m, s = cell(mp)
    print(f"\ns3, the same bytes as a multipart upload by curl ({len(mp)} rounds; 5 MiB parts, two in flight): {s} MiB/s")
PY
