"""A send retried with the same client_msg_id by the same user is one message."""

import pytest

from chorus_helpers import assert_status, cmid

pytestmark = pytest.mark.asyncio


async def test_retries_over_websocket_and_http_store_one_message(api):
    a, b = await api.users(2, "idem")
    conv = await api.group(a, [b])
    a_ws = await api.connect(a)
    b_ws = await api.connect(b)
    key = cmid()
    body = "only once"

    # Three sends with the same key, back to back (the later ones while the first is in flight).
    for _ in range(3):
        await a_ws.send_msg(conv["id"], body, key)
    ids = [await a_ws.expect_accepted(key) for _ in range(3)]
    assert len(set(ids)) == 1, ids
    message_id = ids[0]

    stored = await b_ws.expect_message(conv["id"], lambda m: m["client_msg_id"] == key)
    assert stored["message_id"] == message_id
    assert stored["seq"] == 1

    # A retry over HTTP, after the message is stored.
    resp = await api.send_http(a, conv["id"], body, key)
    assert assert_status(resp, 202)["message_id"] == message_id

    # A retry on a new session of the same user.
    a_ws2 = await api.connect(a)
    await a_ws2.send_msg(conv["id"], body, key)
    assert await a_ws2.expect_accepted(key) == message_id

    # A different key afterwards gets the next seq: nothing was stored in between.
    marker = await a_ws.send_msg(conv["id"], "marker")
    await a_ws.expect_accepted(marker)
    for ws in (a_ws, b_ws):
        if ws is a_ws:
            await ws.expect_message(conv["id"], lambda m: m["client_msg_id"] == key)
        got = await ws.expect_message(conv["id"], lambda m: m["client_msg_id"] == marker)
        assert got["seq"] == 2, got
        await ws.assert_quiet("message", lambda f: f["message"]["client_msg_id"] == key)

    history = await api.history(a, conv["id"])
    assert [(m["seq"], m["client_msg_id"]) for m in history] == [(1, key), (2, marker)]
    assert history[0]["message_id"] == message_id
    assert history[0]["body"] == body


async def test_http_first_then_websocket_retry(api):
    a = await api.new_user("idem")
    conv = await api.group(a)
    key = cmid()
    first = assert_status(await api.send_http(a, conv["id"], "hello", key), 202)["message_id"]
    second = assert_status(await api.send_http(a, conv["id"], "hello", key), 202)["message_id"]
    assert first == second

    ws = await api.connect(a)
    await ws.send_msg(conv["id"], "hello", key)
    assert await ws.expect_accepted(key) == first

    marker = await ws.send_msg(conv["id"], "marker")
    await ws.expect_accepted(marker)
    await ws.expect_message(conv["id"], lambda m: m["client_msg_id"] == marker)
    history = await api.history(a, conv["id"])
    assert [(m["client_msg_id"], m["message_id"]) for m in history][:1] == [(key, first)]
    assert [m["client_msg_id"] for m in history] == [key, marker]


async def test_same_key_from_another_user_is_another_message(api):
    a, b = await api.users(2, "idem")
    conv = await api.group(a, [b])
    a_ws = await api.connect(a)
    b_ws = await api.connect(b)
    key = cmid()

    await a_ws.send_msg(conv["id"], "from a", key)
    id_a = await a_ws.expect_accepted(key)
    await b_ws.send_msg(conv["id"], "from b", key)
    id_b = await b_ws.expect_accepted(key)
    assert id_a != id_b

    got = await a_ws.collect_messages(conv["id"], 2)
    assert {(m["sender_id"], m["message_id"]) for m in got} == {(a.id, id_a), (b.id, id_b)}
    assert sorted(m["seq"] for m in got) == [1, 2]
