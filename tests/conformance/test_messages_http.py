"""Sending over HTTP: the same pipeline as the WebSocket `send`, and its limits."""

import pytest

from chorus_helpers import (
    MAX_BODY_BYTES,
    assert_error,
    assert_message_shape,
    assert_same_message,
    assert_status,
    cmid,
    is_uuid,
)

pytestmark = pytest.mark.asyncio


async def test_http_send_is_stored_and_delivered(api):
    a, b = await api.users(2, "hs")
    conv = await api.group(a, [b])
    b_ws = await api.connect(b)
    a_ws = await api.connect(a)

    client_msg_id = cmid()
    body = "héllo wörld ✓ 𝄞"
    resp = await api.send_http(a, conv["id"], body, client_msg_id)
    accepted = assert_status(resp, 202)
    assert is_uuid(accepted.get("message_id")), accepted

    for ws in (a_ws, b_ws):  # the sender's own sessions get it too
        msg = await ws.expect_message(conv["id"])
        assert msg["message_id"] == accepted["message_id"]
        assert msg["client_msg_id"] == client_msg_id
        assert msg["sender_id"] == a.id
        assert msg["body"] == body
        assert msg["seq"] == 1
        assert msg["origin"] == "user"

    history = await api.history(b, conv["id"])
    assert len(history) == 1
    assert_message_shape(history[0])
    assert_same_message(history[0], msg)

    listed = await api.conversation_of(b, conv["id"])
    assert listed["last_seq"] == 1


async def test_http_send_invalid_bodies(api):
    a = await api.new_user("hb")
    conv = await api.group(a)
    path = f"/conversations/{conv['id']}/messages"

    assert_error(await api.send_http(a, conv["id"], ""), 400, "bad_request")
    assert_error(await api.post(path, a.token, json={"body": "no id"}), 400, "bad_request")
    assert_error(await api.post(path, a.token, json={"client_msg_id": cmid()}), 400, "bad_request")
    assert_error(await api.post(path, a.token, json={"client_msg_id": cmid(), "body": 5}), 400, "bad_request")
    assert_error(await api.post(path, a.token, content=b'{"client_msg_id": '), 400, "bad_request")
    assert_error(await api.post(path, json={"client_msg_id": cmid(), "body": "x"}), 401, "unauthorized")

    assert await api.history(a, conv["id"]) == []


async def test_http_body_size_limit_counts_utf8_bytes(api):
    a = await api.new_user("hl")
    conv = await api.group(a)
    ws = await api.connect(a)

    assert_error(await api.send_http(a, conv["id"], "x" * (MAX_BODY_BYTES + 1)), 413, "too_large")
    # 8193 two-byte characters: 16386 bytes, though fewer than 16 Ki characters.
    assert_error(await api.send_http(a, conv["id"], "é" * (MAX_BODY_BYTES // 2 + 1)), 413, "too_large")

    # Exactly 16 KiB is allowed, in ASCII and in two-byte characters.
    exact = {"x" * MAX_BODY_BYTES, "é" * (MAX_BODY_BYTES // 2)}
    for body in exact:
        assert_status(await api.send_http(a, conv["id"], body), 202)

    delivered = await ws.collect_messages(conv["id"], 2)
    assert {m["body"] for m in delivered} == exact
    history = await api.history(a, conv["id"])
    assert {m["body"] for m in history} == exact
    assert [m["seq"] for m in history] == [1, 2]
