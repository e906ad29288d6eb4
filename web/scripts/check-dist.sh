#!/usr/bin/env bash
# Checks that the committed web/dist is what a fresh build of the committed sources
# makes, byte for byte: the gateway embeds web/dist, so a stale bundle would ship.
# Builds into a temporary directory and compares; leaves web/dist alone.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
npx tsc --noEmit
npx vite build --logLevel warn --outDir "$out"
if ! diff -r "$out" dist; then
    echo "web/dist differs from a fresh build: run 'npm run build' in web/ and commit web/dist" >&2
    exit 1
fi
echo "web/dist matches a fresh build"
