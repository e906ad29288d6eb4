#!/usr/bin/env python3
"""The attacks of the security review, from outside, with a victim watching.

Starts `chorus serve` (default limits, a fresh data directory) or uses --url. A victim
pair keeps talking the whole time: `vic` sends "ping" every 100 ms to `tim`, whose
incoming script answers "pong", and the victim's latency is ping to pong as `vic`
receives it: a path through the store, the automation sandbox and delivery. Each
attack runs for a while beside it; the report gives the victim's latency during each
attack next to the quiet baseline, and what the attack got (how many messages the
amplifying bots made, how many connections were refused, ...).

    target/py/bin/python bench/attacks.py --binary target/release/chorus
    target/py/bin/python bench/attacks.py --binary target/release/chorus --only slowloris,typing

Attacks (docs/security.md numbers them):
  amplify     1   two users' bots answer every message with ten replies each
  kvloop      2   dry runs of a script that loops on ctx.kv.get, many at once
  memory      3   jobs that keep large arrays in module state (server RSS reported)
  githang     4   jobs whose git remote accepts and never answers
  slowloris   5   thousands of connections that send one header line each
  login       9   bogus sign-ins from one address, as fast as the server answers
  typing      12  thousands of typing frames as fast as the socket takes them

Needs the conformance suite's packages (httpx, websockets): scripts/test.sh installs
them into target/py. Linux only (every 127.0.0.0/8 address is the loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid

import httpx
from websockets.asyncio.client import connect as ws_connect

PASSWORD = "correct horse battery"
PONG = "export function onIncoming(msg) { if (msg.body === 'ping') return { reply: 'pong' }; }"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


class Server:
    """The HTTP API and WebSocket sessions of one node."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url + "/api/v1", timeout=120, trust_env=False)

    async def register(self, prefix: str) -> dict:
        name = f"{prefix}_{secrets.token_hex(5)}"
        r = await self.http.post("/auth/register", json={"username": name, "password": PASSWORD})
        r.raise_for_status()
        body = r.json()
        return {"id": body["user"]["id"], "name": name, "token": body["token"]}

    async def call(self, method: str, path: str, user: dict, body=None) -> httpx.Response:
        return await self.http.request(
            method, path, json=body, headers={"authorization": f"Bearer {user['token']}"}
        )

    async def direct(self, a: dict, b: dict) -> str:
        r = await self.call("POST", "/conversations", a, {"kind": "direct", "members": [b["id"]]})
        r.raise_for_status()
        return r.json()["id"]

    async def script(self, user: dict, source: str, **limits) -> str:
        body = {"name": "s", "hooks": ["incoming"], "source": source, **limits}
        r = await self.call("POST", "/scripts", user, body)
        r.raise_for_status()
        return r.json()["id"]

    def ws(self, user: dict):
        return ws_connect(
            self.url.replace("http", "ws", 1) + f"/api/v1/ws?token={user['token']}",
            max_size=None,
        )


class Victim:
    """`vic` pings `tim` every 100 ms; `tim`'s script answers; latency ping to pong."""

    def __init__(self, server: Server):
        self.server = server
        self.samples: list[tuple[float, float]] = []  # (sent at, latency)
        self.sent: dict[str, float] = {}  # client_msg_id -> when, until stored

    async def run(self, stop: asyncio.Event) -> None:
        vic, tim = await self.server.register("vic"), await self.server.register("tim")
        chat = await self.server.direct(vic, tim)
        await self.server.script(tim, PONG)
        async with self.server.ws(vic) as ws:
            reader = asyncio.create_task(self.read(ws))
            while not stop.is_set():
                key = str(uuid.uuid4())
                self.sent[key] = time.monotonic()
                await ws.send(json.dumps({"type": "send", "client_msg_id": key,
                                          "conversation_id": chat, "body": "ping"}))
                try:
                    await asyncio.wait_for(stop.wait(), 0.1)
                except TimeoutError:
                    pass
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass

    async def read(self, ws) -> None:
        pings: dict[str, float] = {}  # a ping's message id -> when it was sent
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") != "message":
                continue
            m = frame["message"]
            if m["body"] == "ping" and m["client_msg_id"] in self.sent:
                pings[m["message_id"]] = self.sent.pop(m["client_msg_id"])
            elif m["body"] == "pong":
                # A script's reply is tagged "script:<script>:<trigger's id>:<n>".
                trigger = m["client_msg_id"].split(":")[2]
                if trigger in pings:
                    sent = pings.pop(trigger)
                    self.samples.append((sent, time.monotonic() - sent))

    def between(self, start: float, end: float) -> list[float]:
        return [lat for sent, lat in self.samples if start <= sent < end]


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no pongs"
    ms = sorted(x * 1000 for x in latencies)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return f"n={len(ms):4d} p50 {statistics.median(ms):7.1f} ms  p99 {p(0.99):7.1f} ms  max {ms[-1]:7.1f} ms"


# ---------------------------------------------------------------------------- attacks


async def amplify(server: Server, ctx: dict) -> str:
    a, b = await server.register("amp"), await server.register("amp")
    chat = await server.direct(a, b)
    tenfold = ("export function onIncoming(msg) { if (msg.body === 'marker') return; "
               "return Array.from({length: 10}, (_, i) => ({reply: msg.body + '.' + i})); }")
    for u in (a, b):
        await server.script(u, tenfold)
    rounds = 20
    for i in range(rounds):
        r = await server.call("POST", f"/conversations/{chat}/messages", a,
                              {"client_msg_id": f"go-{i}", "body": f"go{i}"})
        r.raise_for_status()
    await asyncio.sleep(ctx["duration"])
    r = await server.call("GET", f"/conversations/{chat}", a)
    stored = r.json()["last_seq"]
    return f"{rounds} messages became {stored} stored ({stored / rounds:.1f} each; 1111 each without a bound)"


async def kvloop(server: Server, ctx: dict) -> str:
    attacker = await server.register("kv")
    sid = await server.script(attacker, "export function onIncoming(msg, ctx) { for (;;) ctx.kv.get('k'); }",
                              cpu_ms=1000)
    results: dict[str, int] = {}
    elapsed: list[float] = []
    stop = time.monotonic() + ctx["duration"]

    async def loop():
        while time.monotonic() < stop:
            t0 = time.monotonic()
            r = await server.call("POST", f"/scripts/{sid}/test", attacker, {"message": {"body": "x"}})
            elapsed.append(time.monotonic() - t0)
            body = r.json()
            code = (body.get("error") or {}).get("code") if r.status_code == 200 else f"http {r.status_code}"
            results[str(code)] = results.get(str(code), 0) + 1

    await asyncio.gather(*(loop() for _ in range(8)))
    return f"dry runs: {results}; longest {max(elapsed):.2f} s (the review saw 155 s each)"


async def memory(server: Server, ctx: dict) -> str:
    attacker = await server.register("mem")
    before = rss_mb(ctx["pid"])
    source = ("let keep; export function main() { keep = new Array(10_000_000).fill(1.5); "
              "return keep.length; }")
    ids = []
    for _ in range(8):
        r = await server.call("POST", "/jobs", attacker,
                              {"source": {"script": source}, "memory_bytes": 256 * 1024 * 1024,
                               "cpu_ms": 10_000})
        r.raise_for_status()
        ids.append(r.json()["job_id"])
    statuses = []
    for job in ids:
        while True:
            r = await server.call("GET", f"/jobs/{job}", attacker)
            status = r.json()["status"]
            if status in ("succeeded", "failed"):
                statuses.append(status)
                break
            await asyncio.sleep(0.2)
    after = rss_mb(ctx["pid"])
    await asyncio.sleep(ctx["duration"])
    later = rss_mb(ctx["pid"])
    rss = "" if before is None else f"; server RSS {before:.0f} MB before, {after:.0f} MB after, {later:.0f} MB {ctx['duration']} s later"
    return f"jobs: {statuses.count('succeeded')} succeeded, {statuses.count('failed')} failed{rss} (the review saw 2.1 GB kept)"


async def githang(server: Server, ctx: dict) -> str:
    attacker, other = await server.register("git"), await server.register("job")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    port = silent.getsockname()[1]
    try:
        t0 = time.monotonic()
        for i in range(4):
            r = await server.call("POST", "/jobs", attacker, {"source": {"git": {
                "url": f"https://127.0.0.1:{port}/r{i}.git", "ref": "main", "path": "main.js"}}})
            if r.status_code != 202:
                return f"refused at submission: {r.status_code} {r.text[:200]}"
        r = await server.call("POST", "/jobs", other,
                              {"source": {"script": "export function main() { return 1; }"}})
        job = r.json()["job_id"]
        while (await server.call("GET", f"/jobs/{job}", other)).json()["status"] not in ("succeeded", "failed"):
            await asyncio.sleep(0.1)
        waited = time.monotonic() - t0
        return f"another user's job finished {waited:.1f} s after 4 hanging git jobs (the review saw 300 s per hanging job)"
    finally:
        silent.close()


async def slowloris(server: Server, ctx: dict) -> str:
    host, port = server.url.split("//")[1].split(":")
    port = int(port)
    count = ctx["connections"]
    held, refused_early = [], 0
    t0 = time.monotonic()
    for _ in range(count):
        try:
            r, w = await asyncio.open_connection(host, port, local_addr=("127.0.0.9", 0))
            w.write(b"GET /healthz HTTP/1.1\r\n")
            held.append((r, w))
        except OSError:
            refused_early += 1
    health = await server.http.get(server.url + "/healthz")

    async def closed(r) -> float:
        try:
            while await asyncio.wait_for(r.read(256), 120):
                pass
        except (OSError, TimeoutError):
            pass
        return time.monotonic() - t0

    ends = sorted(await asyncio.gather(*(closed(r) for r, _ in held)))
    for _, w in held:
        w.close()
    soon = sum(1 for e in ends if e < 1.0)
    return (f"{count} half-open connections from one address: {soon} closed within 1 s, "
            f"the last after {ends[-1]:.1f} s; /healthz answered {health.status_code} meanwhile")


async def login(server: Server, ctx: dict) -> str:
    stop = time.monotonic() + ctx["duration"]
    codes: dict[int, int] = {}

    async def flood():
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", timeout=120, trust_env=False) as c:
            while time.monotonic() < stop:
                r = await c.post("/auth/login", json={"username": f"bogus{secrets.token_hex(4)}",
                                                      "password": "wrong password"})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

    await asyncio.gather(*(flood() for _ in range(64)))
    return f"bogus sign-ins answered: {dict(sorted(codes.items()))}"


async def typing(server: Server, ctx: dict) -> str:
    attacker, target = await server.register("typ"), await server.register("typ")
    chat = await server.direct(attacker, target)
    refused = 0
    async with server.ws(attacker) as ws:
        frame = json.dumps({"type": "typing", "conversation_id": chat})
        for _ in range(5000):
            await ws.send(frame)
        nonce = str(uuid.uuid4())
        await ws.send(json.dumps({"type": "ping", "nonce": nonce}))
        async for raw in ws:
            f = json.loads(raw)
            if f.get("type") == "error" and f.get("code") == "rate_limited":
                refused += 1
            if f.get("type") == "pong" and f.get("nonce") == nonce:
                break
    return f"5000 typing frames: {refused} refused, {5000 - refused} passed on"


ATTACKS = {
    "amplify": amplify,
    "kvloop": kvloop,
    "memory": memory,
    "githang": githang,
    "slowloris": slowloris,
    "login": login,
    "typing": typing,
}


async def main_async(args, url: str, pid: int | None) -> None:
    server = Server(url)
    victim = Victim(server)
    stop = asyncio.Event()
    watching = asyncio.create_task(victim.run(stop))
    ctx = {"duration": args.duration, "pid": pid, "connections": args.connections}
    await asyncio.sleep(args.duration)
    rows = [("quiet", "", victim.between(0, time.monotonic()))]
    for name in args.only:
        start = time.monotonic()
        outcome = await ATTACKS[name](server, ctx)
        rows.append((name, outcome, victim.between(start, time.monotonic())))
        await asyncio.sleep(1)
    stop.set()
    await watching
    print(f"{'phase':10s}  victim ping -> pong")
    for name, outcome, lat in rows:
        print(f"{name:10s}  {summary(lat)}")
        if outcome:
            print(f"{'':10s}  {outcome}")
    print(f"pings not stored by the end: {len(victim.sent)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", help="chorus binary to start (default: use --url)")
    p.add_argument("--url", help="a running node instead")
    p.add_argument("--pid", type=int, help="its process id, for RSS (with --url)")
    p.add_argument("--duration", type=float, default=10, help="seconds per attack [10]")
    p.add_argument("--connections", type=int, default=5000, help="slowloris connections [5000]")
    p.add_argument("--only", default=",".join(ATTACKS), help="comma-separated attacks")
    args = p.parse_args()
    args.only = [a for a in args.only.split(",") if a]
    unknown = [a for a in args.only if a not in ATTACKS]
    if unknown:
        p.error(f"unknown attacks: {unknown}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.url:
        asyncio.run(main_async(args, args.url, args.pid))
        return
    if not args.binary:
        p.error("give --binary or --url")
    data = tempfile.mkdtemp(prefix="chorus-attacks-")
    port = free_port()
    env = dict(os.environ, CHORUS_LOG="warn",
               # The attack on git needs its silent remote reachable; everything else is
               # the default configuration.
               CHORUS_JOBS_GIT_PRIVATE_HOSTS="127.0.0.1")
    proc = subprocess.Popen([args.binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "log"), "w"))
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        asyncio.run(main_async(args, url, proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
