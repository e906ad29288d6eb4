"""Users' scripts and auto-replies (issue 4), seen from outside: scripts uploaded,
listed, changed and deleted over HTTP (owner only), compile errors with line and
column, dry runs, replies, rewrites, forwards and blocks seen live over the WebSocket,
`ctx.kv` state kept across messages, runaway scripts stopped with delivery unharmed and
then disabled with a notice, no host objects, auto-replies once per window without
loops, and chains of reply bots ended by the hop limit.

Synchronisation without sleeps:

- A change of a user's automation reaches the other nodes of a cluster through a
  notice, a little later. Before a test relies on a user's scripts, it gives that user
  a probe script (created last, so a node that knows it knows every earlier script and
  the auto-reply too) and sends probes through the same session and conversation as the
  test will, until one is answered (`until_active`). No probe needs a timeout: a probe's
  answer is sent before the probe itself is delivered, so once probe k is seen, the
  answer to probe k-1 either came before it or never will.
- To show that nothing more comes (no loop, no second auto-reply, no stored blocked
  message), a test sends a marker and checks its `seq`: one partition per conversation
  keeps order, so whatever was on its way before the marker has a smaller `seq`.

Scripts under test ignore the probes, their answers and markers (`GUARD`).
"""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest

from chorus_helpers import (
    TIMEOUT,
    Client,
    User,
    assert_error,
    assert_status,
    is_uuid,
    parse_time,
)

pytestmark = pytest.mark.asyncio

# The server's documented defaults (issue 4).
DEFAULT_MEMORY_BYTES = 4 * 1024 * 1024
DEFAULT_CPU_MS = 10
DISABLE_AFTER_FAILURES = 10
MAX_HOPS = 3

# First line of every script under test: leave the test's own traffic alone.
GUARD = "if (/^(probe|ready|marker) /.test(msg.body)) return;"

PROBE_SOURCES = {
    # Incoming: answer a person's probe, and drop it for the owner (so that it does not
    # use up the owner's auto-reply window).
    "incoming": """
export function onIncoming(msg) {
    if (msg.origin === "user" && msg.body.startsWith("probe "))
        return [{ drop: "a probe" }, { reply: "ready " + msg.body.slice(6) }];
}
""",
    "outgoing": """
export function onOutgoing(msg) {
    if (msg.origin === "user" && msg.body.startsWith("probe "))
        return { reply: "ready " + msg.body.slice(6) };
}
""",
}

# ECMAScript's own globals (with Annex B and recent additions): anything else on
# globalThis would be a host object.
ECMASCRIPT_GLOBALS = {
    "globalThis", "Infinity", "NaN", "undefined", "eval", "isFinite", "isNaN", "parseFloat",
    "parseInt", "decodeURI", "decodeURIComponent", "encodeURI", "encodeURIComponent",
    "escape", "unescape", "Object", "Function", "Boolean", "Symbol", "Error",
    "AggregateError", "EvalError", "RangeError", "ReferenceError", "SyntaxError",
    "TypeError", "URIError", "SuppressedError", "Number", "BigInt", "Math", "Date",
    "String", "RegExp", "Array", "Int8Array", "Uint8Array", "Uint8ClampedArray",
    "Int16Array", "Uint16Array", "Int32Array", "Uint32Array", "BigInt64Array",
    "BigUint64Array", "Float16Array", "Float32Array", "Float64Array", "Map", "Set",
    "WeakMap", "WeakSet", "ArrayBuffer", "SharedArrayBuffer", "DataView", "Atomics", "JSON",
    "WeakRef", "FinalizationRegistry", "Iterator", "Promise", "Reflect", "Proxy",
    "DisposableStack", "AsyncDisposableStack", "Intl", "Temporal",
}

# Names a host (Node, Deno, Bun, browsers, the QuickJS shell) would provide.
HOST_NAMES = (
    "require", "process", "fetch", "Deno", "Bun", "std", "os", "bjson", "setTimeout",
    "setInterval", "setImmediate", "clearTimeout", "queueMicrotask", "XMLHttpRequest",
    "WebSocket", "WebAssembly", "Worker", "console", "print", "scriptArgs", "gc", "module",
    "exports", "global", "window", "self", "navigator", "performance", "Buffer",
    "importScripts", "__filename", "__dirname", "structuredClone", "atob", "btoa",
    "TextEncoder", "URL", "crypto", "InternalError",
)


# ----------------------------------------------------------------------------- helpers


async def create_script(api, user: User, hooks, source: str, **fields) -> dict:
    resp = await api.post(
        "/scripts",
        user.token,
        json={"name": fields.pop("name", "test script"), "hooks": list(hooks), "source": source, **fields},
    )
    script = assert_status(resp, 201)
    assert_script_shape(script)
    return script


async def get_script(api, user: User, script_id: str) -> dict:
    script = assert_status(await api.get(f"/scripts/{script_id}", user.token), 200)
    assert_script_shape(script)
    return script


async def dry_run(api, user: User, script_id: str, hook: str, body: str, **message) -> dict:
    resp = await api.post(
        f"/scripts/{script_id}/test", user.token, json={"hook": hook, "message": {"body": body, **message}}
    )
    run = assert_status(resp, 200)
    assert run["hook"] == hook, run
    assert isinstance(run["actions"], list), run
    assert isinstance(run["logs"], list) and all(isinstance(line, str) for line in run["logs"]), run
    assert isinstance(run["elapsed_us"], int) and run["elapsed_us"] >= 0, run
    error = run["error"]
    assert error is None or (isinstance(error.get("code"), str) and isinstance(error.get("message"), str)), run
    return run


async def set_auto_reply(api, user: User, enabled: bool, text: str) -> dict:
    resp = await api.request("PUT", "/settings/auto-reply", token=user.token, json={"enabled": enabled, "text": text})
    body = assert_status(resp, 200)
    assert body == {"enabled": enabled, "text": text}, body
    return body


def assert_script_shape(s: dict) -> None:
    assert isinstance(s, dict), s
    assert is_uuid(s.get("id")) and is_uuid(s.get("owner_id")), s
    assert isinstance(s["name"], str) and isinstance(s["source"], str), s
    assert isinstance(s["hooks"], list) and s["hooks"], s
    assert set(s["hooks"]) <= {"incoming", "outgoing"}, s
    for flag in ("enabled", "fail_closed"):
        assert isinstance(s[flag], bool), s
    for count in ("memory_bytes", "cpu_ms", "version", "runs", "failures"):
        assert isinstance(s[count], int) and not isinstance(s[count], bool) and s[count] >= 0, s
    assert s["failures"] <= s["runs"], s
    assert s["version"] >= 1, s
    assert isinstance(s["last_logs"], list), s
    if s["last_error"] is not None:
        e = s["last_error"]
        assert isinstance(e.get("code"), str) and isinstance(e.get("message"), str), s
        parse_time(e.get("at"))
    assert s["disabled_reason"] is None or isinstance(s["disabled_reason"], str), s
    parse_time(s["created_at"])
    parse_time(s["updated_at"])


def bodies(messages: list[dict]) -> list[str]:
    return [m["body"] for m in messages]


async def next_messages(ws: Client, conv_id: str, n: int, after: int, timeout: float = 30.0) -> list[dict]:
    """The next `n` messages of `conv_id` with a seq above `after`, in arrival order
    (older ones, such as the probes, are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out: list[dict] = []
    while len(out) < n:
        m = await ws.expect_message(conv_id, timeout=max(0.0, deadline - loop.time()))
        if m["seq"] > after:
            out.append(m)
    return out


async def settle(ws: Client, conv_id: str) -> int:
    """Sends a marker on `ws` and returns its seq once it is delivered back: every
    message on its way to `conv_id` before it has a smaller seq."""
    key = await ws.send_msg(conv_id, f"marker {secrets.token_hex(4)}")
    marker = await ws.expect_message(conv_id, lambda m: m["client_msg_id"] == key)
    return marker["seq"]


async def until_active(api, owner: User, hook: str, ws: Client, conv_id: str) -> int:
    """Makes sure `owner`'s automation, as it stands now, runs on what `ws` sends to
    `conv_id` (on a cluster, other nodes learn of changes a little later).

    Creates a probe script for `owner` on `hook`, after every other change of theirs,
    then sends probes on `ws` until one is answered. The answer to probe k is sent before
    probe k goes on to be delivered, so when probe k+1 comes back, the answer to probe k
    has come before it or never will. Returns the seq of the last answer: nothing the
    probes caused is still on its way after it."""
    await create_script(api, owner, [hook], PROBE_SOURCES[hook], name="probe")
    tag = secrets.token_hex(4)

    def answer(k: int):
        return lambda m: m["body"] == f"ready {tag}-{k}" and m["sender_id"] == owner.id

    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    k = 0
    while True:
        key = await ws.send_msg(conv_id, f"probe {tag}-{k}")
        await ws.expect_message(conv_id, lambda m: m["client_msg_id"] == key)
        if k > 0:
            pred = answer(k - 1)
            answered = ws.take(
                "message",
                lambda f: isinstance(f.get("message"), dict)
                and f["message"].get("conversation_id") == conv_id
                and pred(f["message"]),
            )
            if answered:
                # Active since probe k-1 at the latest: probe k is answered too.
                last = await ws.expect_message(conv_id, answer(k))
                assert last["origin"] == "script", last
                return last["seq"]
        if loop.time() > deadline:
            raise AssertionError(f"{owner.username}'s {hook} probe script never answered ({k + 1} probes)")
        k += 1


# ------------------------------------------------------------------------------ tests


async def test_scripts_are_created_listed_changed_and_deleted_by_their_owner_only(api):
    ada, bob = await api.users(2, "scr")
    source = "export function onIncoming(msg, ctx) { ctx.log('hi'); }"
    first = await create_script(api, ada, ["incoming"], source, name="first")
    assert first["owner_id"] == ada.id
    assert (first["name"], first["source"], first["hooks"]) == ("first", source, ["incoming"])
    assert (first["enabled"], first["fail_closed"]) == (True, False), first
    assert (first["memory_bytes"], first["cpu_ms"]) == (DEFAULT_MEMORY_BYTES, DEFAULT_CPU_MS), first
    assert (first["version"], first["runs"], first["failures"]) == (1, 0, 0), first
    assert (first["last_error"], first["last_logs"], first["disabled_reason"]) == (None, [], None), first

    second = await create_script(
        api,
        ada,
        ["outgoing", "incoming", "outgoing"],
        "export function onIncoming() {}\nexport function onOutgoing() {}",
        name="second",
        enabled=False,
        fail_closed=True,
        memory_bytes=1024 * 1024,
        cpu_ms=50,
    )
    assert sorted(second["hooks"]) == ["incoming", "outgoing"], second
    assert (second["enabled"], second["fail_closed"], second["memory_bytes"], second["cpu_ms"]) == (
        False, True, 1024 * 1024, 50,
    ), second

    listed = assert_status(await api.get("/scripts", ada.token), 200)["scripts"]
    assert [s["id"] for s in listed] == [first["id"], second["id"]], "oldest first"
    assert listed[0] == first
    assert await get_script(api, ada, first["id"]) == first

    path = f"/scripts/{first['id']}"
    changed = assert_status(
        await api.request("PUT", path, token=ada.token, json={"name": "renamed", "enabled": False, "cpu_ms": 50}),
        200,
    )
    assert_script_shape(changed)
    assert (changed["name"], changed["enabled"], changed["cpu_ms"], changed["version"]) == ("renamed", False, 50, 2)
    assert changed["source"] == source and changed["created_at"] == first["created_at"], changed
    assert parse_time(changed["updated_at"]) >= parse_time(first["updated_at"]), changed
    assert await get_script(api, ada, first["id"]) == changed

    # Refused changes change nothing.
    for bad in (
        {"cpu_ms": 1_000_000},
        {"cpu_ms": 0},
        {"memory_bytes": 1024},
        {"name": ""},
        {"hooks": []},
        {"hooks": ["outgoing"]},  # no onOutgoing
        {"source": "export function onIncoming( {"},
        {"colour": "blue"},
    ):
        assert_error(await api.request("PUT", path, token=ada.token, json=bad), 400, "bad_request")
    assert await get_script(api, ada, first["id"]) == changed

    # Someone else's scripts do not exist for them.
    assert assert_status(await api.get("/scripts", bob.token), 200) == {"scripts": []}
    assert_error(await api.get(path, bob.token), 404, "not_found")
    assert_error(await api.request("PUT", path, token=bob.token, json={"name": "mine now"}), 404, "not_found")
    assert_error(await api.delete(path, bob.token), 404, "not_found")
    assert_error(await api.post(f"{path}/test", bob.token, json={"message": {"body": "x"}}), 404, "not_found")
    assert await get_script(api, ada, first["id"]) == changed

    # Without a token, nothing; unknown and malformed ids.
    assert_error(await api.get("/scripts"), 401, "unauthorized")
    assert_error(await api.post("/scripts", json={"name": "x", "hooks": ["incoming"], "source": source}), 401, "unauthorized")
    assert_error(await api.get(path), 401, "unauthorized")
    assert_error(await api.get("/scripts/0190b4a4-6a35-7c3e-9d0e-1f7a6a1b2c3d", ada.token), 404, "not_found")
    assert_error(await api.get("/scripts/not-a-uuid", ada.token), 400, "bad_request")

    assert (await api.delete(path, ada.token)).status_code == 204
    assert_error(await api.get(path, ada.token), 404, "not_found")
    assert_error(await api.delete(path, ada.token), 404, "not_found")
    listed = assert_status(await api.get("/scripts", ada.token), 200)["scripts"]
    assert [s["id"] for s in listed] == [second["id"]]


async def test_a_script_that_does_not_compile_is_refused_with_line_and_column(api):
    ada = await api.new_user("cmp")

    async def refused(draft: dict) -> dict:
        resp = await api.post("/scripts", ada.token, json=draft)
        assert_error(resp, 400, "bad_request")
        return resp.json()["error"]

    error = await refused({
        "name": "broken",
        "hooks": ["incoming"],
        "source": "export function onIncoming(msg) {\n  const x = ;\n}\n",
    })
    assert (error.get("line"), error.get("column")) == (2, 13), error
    error = await refused({
        "name": "unclosed",
        "hooks": ["incoming"],
        "source": "export function onIncoming(msg) {\n  return {reply: 'x'\n}\n",
    })
    assert isinstance(error.get("line"), int) and error["line"] >= 2, error
    assert isinstance(error.get("column"), int) and error["column"] >= 1, error

    # A hook the source does not export.
    error = await refused({"name": "wrong hook", "hooks": ["outgoing"], "source": "export function onIncoming(msg) {}"})
    assert "onOutgoing" in error["message"], error
    for draft in (
        {"name": "no hooks", "hooks": [], "source": "export function onIncoming() {}"},
        {"name": "odd hook", "hooks": ["sideways"], "source": "export function onIncoming() {}"},
        {"hooks": ["incoming"], "source": "export function onIncoming() {}"},
        {"name": "no source", "hooks": ["incoming"]},
        {"name": "", "hooks": ["incoming"], "source": "export function onIncoming() {}"},
        {"name": "top-level throw", "hooks": ["incoming"], "source": "throw new Error('no');\nexport function onIncoming() {}"},
        {"name": "greedy", "hooks": ["incoming"], "source": "export function onIncoming() {}", "memory_bytes": 1 << 40},
    ):
        await refused(draft)
    assert assert_status(await api.get("/scripts", ada.token), 200) == {"scripts": []}, "nothing refused was stored"


async def test_dry_run_returns_actions_logs_and_elapsed_time_and_keeps_no_state(api):
    ada = await api.new_user("dry")
    archive = "0190b4a4-6a35-7c3e-9d0e-1f7a6a1b2c3d"
    script = await create_script(
        api,
        ada,
        ["incoming", "outgoing"],
        f"""
export function onIncoming(msg, ctx) {{
    const seen = (ctx.kv.get("seen") ?? 0) + 1;
    ctx.kv.set("seen", seen);
    ctx.log("from", msg.sender, "seen", seen, {{ n: 1 }});
    if (msg.body === "boom") throw new TypeError("bad input");
    if (msg.body === "nonsense") return {{ explode: 1 }};
    if (msg.body === "rewrite") return {{ rewrite: "nope" }};
    return [{{ reply: "hi " + msg.sender }}, {{ forward: "{archive}" }}];
}}
export function onOutgoing(msg) {{
    if (msg.body === "secret") return {{ drop: "no secrets" }};
    return {{ rewrite: msg.body.toUpperCase() + " from " + msg.sender }};
}}
""",
    )
    sid = script["id"]
    for _ in range(2):
        run = await dry_run(api, ada, sid, "incoming", "hello", sender="bob")
        assert run["actions"] == [{"reply": "hi bob"}, {"forward": archive}], run
        assert run["logs"] == ['from bob seen 1 {"n":1}'], "a dry run's kv writes are not kept"
        assert run["error"] is None, run

    run = await dry_run(api, ada, sid, "outgoing", "quiet")
    assert run["actions"] == [{"rewrite": f"QUIET from {ada.username}"}], "outgoing runs as the owner"
    assert (run["logs"], run["error"]) == ([], None), run
    run = await dry_run(api, ada, sid, "outgoing", "secret")
    assert run["actions"] == [{"drop": "no secrets"}], run

    # Failures are answered, not raised: 200 with an error, the logs up to it.
    run = await dry_run(api, ada, sid, "incoming", "boom", sender="bob")
    assert run["actions"] == [] and run["error"]["code"] == "thrown", run
    assert "bad input" in run["error"]["message"], run
    assert run["logs"] == ['from bob seen 1 {"n":1}'], run
    for body in ("nonsense", "rewrite"):  # not an action; rewrite is for onOutgoing only
        run = await dry_run(api, ada, sid, "incoming", body)
        assert run["actions"] == [] and run["error"]["code"] == "bad_action", run

    # Bad requests.
    path = f"/scripts/{sid}/test"
    assert_error(await api.post(path, ada.token, json={"hook": "incoming"}), 400, "bad_request")
    assert_error(await api.post(path, ada.token, json={"hook": "sideways", "message": {"body": "x"}}), 400, "bad_request")

    # Dry runs are not runs.
    status = await get_script(api, ada, sid)
    assert (status["runs"], status["failures"], status["last_error"]) == (0, 0, None), status


async def test_scripts_reach_no_host_objects(api):
    ada = await api.new_user("host")
    types = ", ".join(f"{json.dumps(n)}: typeof {n}" for n in HOST_NAMES)
    script = await create_script(
        api,
        ada,
        ["incoming"],
        f"""
export function onIncoming(msg, ctx) {{
    return {{ reply: JSON.stringify({{
        types: {{ {types} }},
        globals: Object.getOwnPropertyNames(globalThis),
        ctx: Object.getOwnPropertyNames(ctx).sort(),
        kv: Object.getOwnPropertyNames(ctx.kv).sort(),
        viaEval: eval("typeof require + ' ' + typeof process + ' ' + typeof std + ' ' + typeof os"),
        viaFunction: Function("return typeof fetch + ' ' + typeof Deno + ' ' + typeof setTimeout")(),
        globalThisIsThis: Function("return this")() === globalThis,
    }}) }};
}}
""",
    )
    run = await dry_run(api, ada, script["id"], "incoming", "what is there?")
    assert run["error"] is None, run
    [action] = run["actions"]
    seen = json.loads(action["reply"])
    defined = {name: kind for name, kind in seen["types"].items() if kind != "undefined"}
    assert not defined, f"host objects reachable: {defined}"
    extra = sorted(set(seen["globals"]) - ECMASCRIPT_GLOBALS)
    assert not extra, f"globals that are not ECMAScript: {extra}"
    assert seen["ctx"] == ["kv", "log", "now"], seen
    assert seen["kv"] == ["delete", "get", "set"], seen
    assert seen["viaEval"] == "undefined undefined undefined undefined", seen
    assert seen["viaFunction"] == "undefined undefined undefined", seen
    assert seen["globalThisIsThis"] is True, seen

    # Modules of the QuickJS shell or of Node cannot be imported: refused at upload...
    for module in ("os", "std", "fs", "node:fs", "child_process"):
        for source in (
            f"import * as m from '{module}';\nexport function onIncoming() {{}}",
            f"export {{ default as onIncoming }} from '{module}';",
        ):
            resp = await api.post("/scripts", ada.token, json={"name": "importer", "hooks": ["incoming"], "source": source})
            assert_error(resp, 400, "bad_request")
    # ...and a dynamic import fails when it runs.
    dynamic = await create_script(
        api,
        ada,
        ["incoming"],
        "export async function onIncoming(msg) {\n"
        "    const m = await import(msg.body);\n"
        "    return { reply: 'imported ' + Object.keys(m).join(',') };\n"
        "}",
    )
    for module in ("os", "std"):
        run = await dry_run(api, ada, dynamic["id"], "incoming", module)
        assert run["actions"] == [], f"import('{module}') worked: {run}"
        assert run["error"] is not None and run["error"]["code"] == "thrown", run
    listed = assert_status(await api.get("/scripts", ada.token), 200)["scripts"]
    assert {s["id"] for s in listed} == {script["id"], dynamic["id"]}, "no importer was stored"


async def test_outgoing_scripts_rewrite_reply_forward_and_block_live(api):
    ada, bob, cy = await api.users(3, "out")
    chat = (await api.direct(ada, bob.id))["id"]
    archive = (await api.direct(ada, cy.id))["id"]
    await create_script(
        api,
        ada,
        ["outgoing"],
        f"""
export function onOutgoing(msg) {{
    {GUARD}
    if (msg.origin !== "user") return;
    if (msg.body.includes("secret")) return {{ drop: "no secrets here" }};
    if (msg.body === "shout") return {{ rewrite: "SHOUT" }};
    if (msg.body === "ping") return {{ reply: "auto: pong" }};
    if (msg.body === "keep") return {{ forward: "{archive}" }};
}}
""",
    )
    ada_ws = await api.connect(ada)
    bob_ws = await api.connect(bob)
    cy_ws = await api.connect(cy)
    base = await until_active(api, ada, "outgoing", ada_ws, chat)

    shout = await ada_ws.send_msg(chat, "shout")
    await ada_ws.expect_accepted(shout)
    [m] = await next_messages(bob_ws, chat, 1, base)
    assert (m["body"], m["origin"], m["sender_id"], m["client_msg_id"]) == ("SHOUT", "user", ada.id, shout), m
    [own] = await next_messages(ada_ws, chat, 1, base)
    assert own == m, "the sender sees the rewritten message too"

    await ada_ws.send_msg(chat, "ping")
    got = await next_messages(bob_ws, chat, 2, m["seq"])
    assert bodies(got) == ["ping", "auto: pong"], got
    assert (got[1]["origin"], got[1]["sender_id"]) == ("script", ada.id), got[1]

    await ada_ws.send_msg(chat, "keep")
    [kept] = await next_messages(bob_ws, chat, 1, got[1]["seq"])
    assert (kept["body"], kept["origin"]) == ("keep", "user"), kept
    copy = await cy_ws.expect_message(archive)
    assert (copy["body"], copy["origin"], copy["sender_id"]) == ("keep", "script", ada.id), copy

    secret = await ada_ws.send_msg(chat, "the secret plan")
    error = await ada_ws.expect_error("blocked", secret)
    assert error["message"] == "no secrets here", error

    marker = await settle(ada_ws, chat)
    assert marker == kept["seq"] + 1, "the blocked message was never stored"
    seen_by_bob = await next_messages(bob_ws, chat, 1, kept["seq"])
    assert seen_by_bob[0]["seq"] == marker and seen_by_bob[0]["body"].startswith("marker"), seen_by_bob
    history = await api.history(bob, chat, after_seq=base)
    assert bodies(history[:-1]) == ["SHOUT", "ping", "auto: pong", "keep"], history
    await cy_ws.assert_quiet("message", lambda f: f["message"]["conversation_id"] == archive)


async def test_failing_outgoing_scripts_are_fail_open_unless_fail_closed(api):
    ada, bob = await api.users(2, "fail")
    chat = (await api.direct(ada, bob.id))["id"]
    source = "export function onOutgoing(msg) { if (msg.body === 'odd') null.boom; }"
    strict = await create_script(api, ada, ["outgoing"], source, name="strict", fail_closed=True)
    lenient = await create_script(api, bob, ["outgoing"], source, name="lenient")
    ada_ws = await api.connect(ada)
    bob_ws = await api.connect(bob)
    base = await until_active(api, ada, "outgoing", ada_ws, chat)
    base = max(base, await until_active(api, bob, "outgoing", bob_ws, chat))

    blocked = await ada_ws.send_msg(chat, "odd")
    error = await ada_ws.expect_error("blocked", blocked)
    assert "fail" in error["message"], error
    passed = await bob_ws.send_msg(chat, "odd")
    await bob_ws.expect_accepted(passed)
    [m] = await next_messages(ada_ws, chat, 1, base)
    assert (m["body"], m["sender_id"], m["client_msg_id"]) == ("odd", bob.id, passed), m
    assert await settle(ada_ws, chat) == m["seq"] + 1, "ada's odd message was never stored"

    for script in (strict, lenient):
        owner = ada if script is strict else bob
        status = await get_script(api, owner, script["id"])
        assert status["failures"] == 1 and status["runs"] >= 2, status
        assert status["last_error"]["code"] == "thrown", status
        assert status["enabled"] is True, status


async def test_incoming_scripts_reply_and_keep_kv_state_across_messages(api):
    ada, bob, cy = await api.users(3, "kv")
    group = (await api.group(ada, [bob, cy]))["id"]
    script = await create_script(
        api,
        bob,
        ["incoming"],
        f"""
export function onIncoming(msg, ctx) {{
    {GUARD}
    if (msg.origin !== "user") return;
    const n = (ctx.kv.get("count") ?? 0) + 1;
    ctx.kv.set("count", n);
    ctx.log("message", n, "from", msg.sender);
    if (msg.body === "how many?") return {{ reply: "bob's bot counted " + n }};
}}
""",
    )
    ada_ws = await api.connect(ada)
    bob_ws = await api.connect(bob)
    cy_ws = await api.connect(cy)
    base = await until_active(api, bob, "incoming", ada_ws, group)

    for body in ("hello", "how many?"):
        await ada_ws.send_msg(group, body)
    got = await next_messages(cy_ws, group, 3, base)
    assert bodies(got) == ["hello", "how many?", "bob's bot counted 2"], got
    assert (got[2]["origin"], got[2]["sender_id"]) == ("script", bob.id), got[2]

    # The count goes on with the next messages: the state is kept between runs.
    for body in ("one more", "how many?"):
        await ada_ws.send_msg(group, body)
    everything = await next_messages(ada_ws, group, 6, base)
    assert bodies(everything) == [
        "hello", "how many?", "bob's bot counted 2", "one more", "how many?", "bob's bot counted 4",
    ], everything
    assert bodies(await next_messages(bob_ws, group, 6, base)) == bodies(everything)

    status = await get_script(api, bob, script["id"])
    assert status["failures"] == 0 and status["runs"] >= 6, status
    assert status["last_logs"] == [f"message 4 from {ada.username}"], status
    # A dry run reads the stored state (and keeps its own write to itself).
    for _ in range(2):
        run = await dry_run(api, bob, script["id"], "incoming", "how many?", sender="someone")
        assert run["actions"] == [{"reply": "bob's bot counted 5"}], run


async def test_an_incoming_drop_keeps_the_message_from_its_owner_only(api):
    ada, bob, cy = await api.users(3, "drop")
    group = (await api.group(ada, [bob, cy]))["id"]
    await create_script(
        api,
        bob,
        ["incoming"],
        f"export function onIncoming(msg) {{ {GUARD} if (msg.body.startsWith('spam')) return {{ drop: 'spam' }}; }}",
    )
    ada_ws = await api.connect(ada)
    bob_ws = await api.connect(bob)
    cy_ws = await api.connect(cy)
    base = await until_active(api, bob, "incoming", ada_ws, group)

    keys = [await ada_ws.send_msg(group, body) for body in ("hello", "spam spam", "after the spam")]
    got = await next_messages(cy_ws, group, 3, base)
    assert [m["client_msg_id"] for m in got] == keys, "the other members get everything"
    marker = await settle(ada_ws, group)
    seen_by_bob = await next_messages(bob_ws, group, 3, base)
    # (Not even to fill the gap in seq that the drop leaves between "hello" and the next.)
    assert bodies(seen_by_bob[:2]) == ["hello", "after the spam"], (
        f"the dropped message reached bob live: {bodies(seen_by_bob)}"
    )
    assert seen_by_bob[2]["seq"] == marker, seen_by_bob
    # It is stored all the same: the history has it, for bob too.
    assert "spam spam" in bodies(await api.history(bob, group, after_seq=base))


async def test_runaway_scripts_are_stopped_delivery_goes_on_and_they_are_disabled(api):
    ada, bob = await api.users(2, "run")
    chat = (await api.direct(ada, bob.id))["id"]
    looping = await create_script(
        api,
        bob,
        ["incoming"],
        f"export function onIncoming(msg) {{ {GUARD} for (;;) {{ try {{ while (true) {{}} }} catch (e) {{}} }} }}",
        name="looping",
    )
    bomb = await create_script(
        api,
        bob,
        ["incoming"],
        f"export function onIncoming(msg) {{ {GUARD} const a = []; for (;;) a.push(new Array(1e5).fill(msg.body)); }}",
        name="bomb",
        cpu_ms=1000,  # time enough to run out of memory first
    )
    scripts = {looping["id"]: "timeout", bomb["id"]: "out_of_memory"}

    # Stopped within their limits, and the dry run says why.
    for sid, code in scripts.items():
        run = await dry_run(api, bob, sid, "incoming", "x")
        assert (run["actions"], run["error"]["code"]) == ([], code), run
        assert run["elapsed_us"] < 5_000_000, f"stopped only after {run['elapsed_us']} µs: {run}"

    ada_ws = await api.connect(ada)
    bob_ws = await api.connect(bob, name="bob1")
    bob_ws2 = await api.connect(bob, name="bob2")
    base = await until_active(api, bob, "incoming", ada_ws, chat)
    # The probes ran them too (and the scripts let them be).
    runs_before = {sid: (await get_script(api, bob, sid))["runs"] for sid in scripts}
    for sid in scripts:
        s = await get_script(api, bob, sid)
        assert (s["failures"], s["enabled"]) == (0, True), s

    loop = asyncio.get_running_loop()
    started = loop.time()
    keys = [await ada_ws.send_msg(chat, f"message {i}") for i in range(DISABLE_AFTER_FAILURES)]
    for ws in (bob_ws, bob_ws2, ada_ws):
        got = await next_messages(ws, chat, DISABLE_AFTER_FAILURES, base, timeout=TIMEOUT)
        assert [m["client_msg_id"] for m in got] == keys, "failing incoming scripts leave delivery alone"
        assert [m["seq"] for m in got] == list(range(base + 1, base + 1 + len(keys))), got
    elapsed = loop.time() - started
    assert elapsed < TIMEOUT, f"{DISABLE_AFTER_FAILURES} messages took {elapsed:.1f}s"

    for ws in (bob_ws, bob_ws2):
        notices = [await ws.expect("notice") for _ in scripts]
        assert sorted(n.get("script_id") for n in notices) == sorted(scripts), notices
        for n in notices:
            assert n.get("kind") == "script_disabled" and isinstance(n.get("message"), str), n
    await ada_ws.assert_quiet("notice")

    for sid, code in scripts.items():
        s = await get_script(api, bob, sid)
        assert s["enabled"] is False, s
        assert isinstance(s["disabled_reason"], str) and s["disabled_reason"], s
        assert s["runs"] == runs_before[sid] + DISABLE_AFTER_FAILURES, s
        assert s["failures"] == DISABLE_AFTER_FAILURES, s
        assert s["last_error"]["code"] == code, s

    # Disabled scripts run no more.
    marker = await settle(ada_ws, chat)
    assert marker == base + DISABLE_AFTER_FAILURES + 1
    for sid in scripts:
        s = await get_script(api, bob, sid)
        assert s["runs"] == runs_before[sid] + DISABLE_AFTER_FAILURES, s

    # Enabled again by its owner: a fresh start.
    s = assert_status(
        await api.request("PUT", f"/scripts/{looping['id']}", token=bob.token, json={"enabled": True}), 200
    )
    assert (s["enabled"], s["disabled_reason"]) == (True, None), s


async def test_auto_reply_answers_once_per_window_and_never_automation(api):
    ada, bob = await api.users(2, "away")
    assert assert_status(await api.get("/settings/auto-reply", bob.token), 200) == {"enabled": False, "text": ""}
    assert_error(await api.get("/settings/auto-reply"), 401, "unauthorized")
    for bad in ({"enabled": True, "text": ""}, {"enabled": True, "text": "   "}, {"enabled": True},
                {"enabled": True, "text": "x" * (16 * 1024 + 1)}):
        assert_error(await api.request("PUT", "/settings/auto-reply", token=bob.token, json=bad), 400, "bad_request")
    assert assert_status(await api.get("/settings/auto-reply", bob.token), 200) == {"enabled": False, "text": ""}

    chat = (await api.direct(ada, bob.id))["id"]
    away = {u.id: f"{u.username} is away" for u in (ada, bob)}
    for u in (ada, bob):
        await set_auto_reply(api, u, True, away[u.id])
        assert assert_status(await api.get("/settings/auto-reply", u.token), 200) == {"enabled": True, "text": away[u.id]}
    ada_ws = await api.connect(ada)
    bob_ws = await api.connect(bob)
    base = await until_active(api, bob, "incoming", ada_ws, chat)
    base = max(base, await until_active(api, ada, "incoming", bob_ws, chat))

    # Ada writes twice: Bob's auto-reply answers once, and Ada's does not answer it.
    for body in ("are you there?", "hello?"):
        await ada_ws.send_msg(chat, body)
    got = await next_messages(ada_ws, chat, 3, base)
    assert sorted((m["body"], m["origin"], m["sender_id"]) for m in got) == sorted([
        ("are you there?", "user", ada.id),
        ("hello?", "user", ada.id),
        (away[bob.id], "auto_reply", bob.id),
    ]), got
    marker = await settle(ada_ws, chat)
    assert marker == base + 4, "one auto-reply per window, and no auto-reply to an auto-reply"

    # Bob writes: Ada's auto-reply answers him once; his does not answer hers.
    for body in ("back now", "still there?"):
        await bob_ws.send_msg(chat, body)
    got = await next_messages(bob_ws, chat, 3, marker)
    assert sorted((m["body"], m["origin"], m["sender_id"]) for m in got) == sorted([
        ("back now", "user", bob.id),
        ("still there?", "user", bob.id),
        (away[ada.id], "auto_reply", ada.id),
    ]), got
    assert await settle(bob_ws, chat) == marker + 4

    # Turned off: kept as set.
    await set_auto_reply(api, bob, False, "gone fishing")
    assert assert_status(await api.get("/settings/auto-reply", bob.token), 200) == {"enabled": False, "text": "gone fishing"}


async def test_two_reply_bots_stop_after_the_hop_limit(api):
    ada, bob = await api.users(2, "bots")
    chat = (await api.direct(ada, bob.id))["id"]
    for u in (ada, bob):
        await create_script(
            api,
            u,
            ["incoming"],
            f"export function onIncoming(msg) {{ {GUARD} return {{ reply: 're: ' + msg.body }}; }}",
            name="echo bot",
        )
    ada_ws = await api.connect(ada)
    bob_ws = await api.connect(bob)
    base = await until_active(api, bob, "incoming", ada_ws, chat)
    base = max(base, await until_active(api, ada, "incoming", bob_ws, chat))

    await ada_ws.send_msg(chat, "hi")
    # hi (0 hops) -> bob's bot (1) -> ada's bot (2) -> bob's bot (3): the chain ends.
    expected = ["hi"] + ["re: " * n + "hi" for n in range(1, MAX_HOPS + 1)]
    for ws in (ada_ws, bob_ws):
        got = await next_messages(ws, chat, len(expected), base)
        assert bodies(got) == expected, got
        assert [m["sender_id"] for m in got] == [ada.id, bob.id, ada.id, bob.id], got
        assert [m["origin"] for m in got] == ["user"] + ["script"] * MAX_HOPS, got
    assert await settle(ada_ws, chat) == base + len(expected) + 1, "nothing after the hop limit"
