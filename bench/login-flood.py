#!/usr/bin/env python3
"""A real user's sign-in latency while others flood the server with bogus sign-ins.

Starts `chorus serve` (default limits, fresh data directory), signs a real user up from
127.0.0.2, then measures that user signing in from 127.0.0.2, one sign-in at a time:
first on a quiet server, then while FLOOD threads post sign-ins with made-up names and
wrong passwords as fast as the server answers. The flood comes from 127.0.0.1 (one
address), or spread over --flood-addrs addresses (127.0.1.x: many attackers, which
the per-address limits do not stop and only the bounded hashing queue does).

    python3 bench/login-flood.py --binary target/debug/chorus --flood 64 --duration 10
    python3 bench/login-flood.py --binary target/debug/chorus --flood 64 --flood-addrs 64

Prints the probe's latency percentiles and statuses, and the flood's statuses. Linux
only (any 127.0.0.0/8 address is the loopback there). Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, source: str, path: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120, source_address=(source, 0))
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        r = conn.getresponse()
        text = r.read()
        return r.status, json.loads(text) if text else {}
    finally:
        conn.close()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def probe(port: int, user: dict, stop: threading.Event, out: list, every: float) -> None:
    """Signs the real user in, one at a time, until `stop`."""
    while not stop.is_set():
        t0 = time.monotonic()
        status, _ = post(port, "127.0.0.2", "/api/v1/auth/login", user)
        out.append((time.monotonic() - t0, status, t0))
        stop.wait(every)


def flood(port: int, source: str, stop: threading.Event, statuses: collections.Counter) -> None:
    while not stop.is_set():
        name = f"bogus{random.randrange(1 << 30)}"
        try:
            status, _ = post(port, source, "/api/v1/auth/login",
                             {"username": name, "password": "wrong password"})
        except OSError:
            status = "error"
        statuses[status] += 1


def report(label: str, samples: list) -> None:
    ms = [t * 1000 for t, s, *_ in samples if s == 200]
    codes = collections.Counter(s for _, s, *_ in samples)
    print(f"{label}: {len(samples)} sign-ins, statuses {dict(codes)}; 200s in ms: "
          f"p50 {percentile(ms, 50):.0f}, p90 {percentile(ms, 90):.0f}, max {max(ms, default=float('nan')):.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/debug/chorus")
    ap.add_argument("--flood", type=int, default=64, help="parallel bogus sign-ins")
    ap.add_argument("--flood-addrs", type=int, default=1, help="source addresses of the flood")
    ap.add_argument("--duration", type=float, default=10, help="seconds of flood")
    ap.add_argument("--quiet-probes", type=int, default=10)
    ap.add_argument("--window", type=float, default=0, help="also report the probe per window of this many seconds")
    args = ap.parse_args()

    data = tempfile.mkdtemp(prefix="chorus-login-flood-")
    port = free_port()
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen([args.binary, "serve", "--listen", f"127.0.0.1:{port}",
                               "--data-dir", os.path.join(data, "data")],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        user = {"username": "real-user", "password": "correct horse"}
        status, body = post(port, "127.0.0.2", "/api/v1/auth/register", user)
        assert status == 201, (status, body)

        quiet: list = []
        for _ in range(args.quiet_probes):
            t0 = time.monotonic()
            status, _ = post(port, "127.0.0.2", "/api/v1/auth/login", user)
            quiet.append((time.monotonic() - t0, status, t0))
        report("quiet", quiet)

        stop = threading.Event()
        statuses: collections.Counter = collections.Counter()
        sources = ["127.0.0.1"] if args.flood_addrs == 1 else [
            f"127.0.1.{i + 1}" for i in range(args.flood_addrs)]
        threads = [threading.Thread(target=flood, args=(port, sources[i % len(sources)], stop, statuses),
                                    daemon=True) for i in range(args.flood)]
        for t in threads:
            t.start()
        during: list = []
        prober = threading.Thread(target=probe, args=(port, user, stop, during, 0.2), daemon=True)
        prober.start()
        time.sleep(args.duration)
        stop.set()
        prober.join()
        for t in threads:
            t.join()
        report(f"during a flood of {args.flood} from {len(sources)} address(es)", during)
        if args.window:
            start = during[0][2] if during else 0
            for w in range(int(args.duration // args.window) + 1):
                part = [x for x in during if w * args.window <= x[2] - start < (w + 1) * args.window]
                if part:
                    report(f"  {w * args.window:.0f}-{(w + 1) * args.window:.0f} s", part)
        print(f"flood answers: {dict(statuses)}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
