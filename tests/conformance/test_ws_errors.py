"""Bad frames, size limits, refused upgrades and the rate limit, over the WebSocket."""

import json
import uuid

import pytest

from chorus_helpers import (
    MAX_BODY_BYTES,
    assert_error_body,
    cmid,
    forged_tokens,
    swapped_payload,
)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    "frame, code",
    [
        ("{not json", "bad_request"),
        ("", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('"ping"', "bad_request"),
        ('{"body": "no type"}', "bad_request"),
        ('{"type": 5}', "bad_request"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "PING"}', "unknown_type"),
        ('{"type": "send", "body": "missing fields"}', "bad_request"),
        ('{"type": "read", "conversation_id": "not-a-uuid", "seq": 1}', "bad_request"),
        ('{"type": "typing"}', "bad_request"),
    ],
)
async def test_bad_frame_gets_error_and_connection_stays_open(api, frame, code):
    user = await api.new_user("bad")
    ws = await api.connect(user)
    await ws.send(frame)
    await ws.expect_error(code)
    await ws.ping("still-open")


async def test_binary_frame_is_bad_request(api):
    user = await api.new_user("bin")
    ws = await api.connect(user)
    await ws.send(b"\x00\x01binary\xff")
    await ws.expect_error("bad_request")
    await ws.ping(1)


async def test_oversized_frame_is_too_large_and_connection_stays_open(api):
    user = await api.new_user("big")
    ws = await api.connect(user)
    huge = "x" * 100_000
    await ws.send(json.dumps({"type": "ping", "nonce": huge}))
    await ws.expect_error("too_large")
    await ws.ping("after-too-large")
    # The oversized ping itself was not answered.
    await ws.assert_quiet("pong", lambda f: f.get("nonce") == huge)

    # Just as large, not even JSON.
    await ws.send("{" * 100_000)
    await ws.expect_error("too_large")
    await ws.ping("after-second")


async def test_send_errors_carry_client_msg_id(api):
    a, outsider = await api.users(2, "serr")
    conv = await api.group(a)
    theirs = await api.group(outsider)
    ws = await api.connect(a)

    too_big = await ws.send_msg(conv["id"], "x" * (MAX_BODY_BYTES + 1))
    await ws.expect_error("too_large", too_big)
    too_big_utf8 = await ws.send_msg(conv["id"], "é" * (MAX_BODY_BYTES // 2 + 1))
    await ws.expect_error("too_large", too_big_utf8)
    empty = await ws.send_msg(conv["id"], "")
    await ws.expect_error("bad_request", empty)
    foreign = await ws.send_msg(theirs["id"], "let me in")
    await ws.expect_error("forbidden", foreign)
    unknown = await ws.send_msg(str(uuid.uuid4()), "anyone?")
    await ws.expect_error("not_found", unknown)

    # Exactly 16 KiB (in bytes) is fine.
    ok = await ws.send_msg(conv["id"], "é" * (MAX_BODY_BYTES // 2))
    await ws.expect_accepted(ok)
    msg = await ws.expect_message(conv["id"])
    assert msg["client_msg_id"] == ok and msg["seq"] == 1

    history = await api.history(a, conv["id"])
    assert [m["client_msg_id"] for m in history] == [ok]
    assert await api.history(outsider, theirs["id"]) == []


async def test_upgrade_with_valid_token_by_header_or_query(api):
    user = await api.new_user("up")
    one = await api.connect(user, via="header")
    two = await api.connect(user, via="query")
    assert one.session_id != two.session_id


async def test_unauthorized_upgrade_fails_with_401(api):
    a, b = await api.users(2, "up")
    bad = {"missing": None, "garbage": "garbage", "swapped": swapped_payload(a.token, b.token)}
    bad.update(forged_tokens(a.token))
    for name, token in bad.items():
        for via in (("header",) if token is None else ("header", "query")):
            status, body = await api.upgrade_status(token, via)
            assert status == 401, f"{name} token via {via}: upgrade answered {status}"
            if body:
                assert_error_body(json.loads(body), "unauthorized", f"{name} via {via}")


@pytest.mark.timeout(300)
async def test_rate_limit(api):
    user = await api.new_user("rate")
    conv = await api.group(user)
    ws = await api.connect(user)

    keys = [cmid() for _ in range(700)]
    for i, key in enumerate(keys):
        await ws.send_msg(conv["id"], f"flood {i}", key)

    answers = {}
    pending = set(keys)
    while pending:
        frame = await ws.expect(
            ("accepted", "error"), lambda f: f.get("client_msg_id") in pending, timeout=60
        )
        pending.discard(frame["client_msg_id"])
        answers[frame["client_msg_id"]] = frame

    accepted = {k for k, f in answers.items() if f["type"] == "accepted"}
    errors = [f for f in answers.values() if f["type"] == "error"]
    assert errors, "700 immediate sends were never rate limited"
    for err in errors:
        assert err.get("code") == "rate_limited", err
        assert isinstance(err.get("message"), str), err
        retry = err.get("retry_after_ms")
        assert isinstance(retry, int) and not isinstance(retry, bool) and retry > 0, err
    assert accepted, "nothing was accepted"

    # The connection is still usable.
    await ws.ping("after-flood")

    # Every accepted send is stored, once; nothing else is.
    stored = await ws.collect_messages(conv["id"], len(accepted), timeout=120)
    assert {m["client_msg_id"] for m in stored} == accepted
    await ws.assert_quiet("message")
    history = await api.full_history(user, conv["id"])
    assert len(history) == len(accepted)
    assert {m["client_msg_id"] for m in history} == accepted
    assert [m["seq"] for m in history] == list(range(1, len(accepted) + 1))

    # With more than 500 stored, limit clamps to 500.
    page = await api.history(user, conv["id"], after_seq=0, limit=1000)
    assert len(page) == min(len(accepted), 500)
    assert [m["seq"] for m in page] == list(range(1, len(page) + 1))
