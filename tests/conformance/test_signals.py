"""ping/pong, typing, read markers and presence."""

import pytest

from chorus_helpers import assert_status, eventually

pytestmark = pytest.mark.asyncio


async def test_ping_pong_echoes_nonce(api):
    user = await api.new_user("ping")
    ws = await api.connect(user)
    for nonce in ("abc", 42, {"nested": [1, "two"]}):
        await ws.send({"type": "ping", "nonce": nonce})
        pong = await ws.expect("pong")
        assert pong.get("nonce") == nonce, pong
    await ws.send({"type": "ping"})
    pong = await ws.expect("pong")
    assert pong.get("nonce") is None, pong


async def test_typing_reaches_other_members_only(api):
    a, b, c = await api.users(3, "typ")
    group = await api.group(a, [b])
    await api.direct(a, c.id)  # C knows A, but is not in the group
    a1 = await api.connect(a, name="a1")
    b_ws = await api.connect(b)
    c_ws = await api.connect(c)

    await a1.send({"type": "typing", "conversation_id": group["id"]})
    frame = await b_ws.expect("typing")
    assert frame["conversation_id"] == group["id"]
    assert frame["user_id"] == a.id

    await a1.assert_quiet("typing")
    await c_ws.assert_quiet("typing")

    # And the other way round.
    await b_ws.send({"type": "typing", "conversation_id": group["id"]})
    frame = await a1.expect("typing")
    assert (frame["conversation_id"], frame["user_id"]) == (group["id"], b.id)
    await b_ws.assert_quiet("typing")


async def test_read_marker(api):
    a, b = await api.users(2, "read")
    group = await api.group(a, [b])
    a1 = await api.connect(a, name="a1")
    a2 = await api.connect(a, name="a2")
    b_ws = await api.connect(b)

    for i in range(5):
        await b_ws.send_msg(group["id"], f"unread {i}")
    await a1.collect_messages(group["id"], 5)

    async def unread_is(last_seq, n):
        listed = await api.conversation_of(a, group["id"])
        assert (listed["last_seq"], listed["unread"]) == (last_seq, n), listed
        single = assert_status(await api.get(f"/conversations/{group['id']}", a.token), 200)
        assert (single["last_seq"], single["unread"]) == (last_seq, n), single

    # Nothing read yet: everything is unread.
    await eventually(lambda: unread_is(5, 5))

    await a1.send({"type": "read", "conversation_id": group["id"], "seq": 3})
    for ws in (a2, b_ws):
        frame = await ws.expect("read", lambda f: f.get("conversation_id") == group["id"])
        assert frame["user_id"] == a.id, frame
        assert frame["seq"] == 3, frame

    await eventually(lambda: unread_is(5, 2))

    await a2.send({"type": "read", "conversation_id": group["id"], "seq": 5})
    frame = await a1.expect("read", lambda f: f.get("seq") == 5)
    assert (frame["conversation_id"], frame["user_id"]) == (group["id"], a.id)
    await b_ws.expect("read", lambda f: f.get("seq") == 5 and f.get("user_id") == a.id)
    await eventually(lambda: unread_is(5, 0))

    # A new message makes one unread.
    key = await b_ws.send_msg(group["id"], "one more")
    await a1.expect_message(group["id"], lambda m: m["client_msg_id"] == key)
    await eventually(lambda: unread_is(6, 1))


async def test_presence(api):
    a, b, d = await api.users(3, "pres")
    await api.direct(a, b.id)
    await api.direct(b, d.id)  # D knows B but shares nothing with A
    b_ws = await api.connect(b)
    d_ws = await api.connect(d)

    a1 = await api.connect(a, name="a1")
    frame = await b_ws.expect("presence", lambda f: f.get("user_id") == a.id)
    assert frame["online"] is True, frame

    a2 = await api.connect(a, name="a2")
    # Closing one of two sessions: A is still online.
    await a1.close()
    await b_ws.assert_quiet("presence", lambda f: f.get("user_id") == a.id and f.get("online") is False)

    await a2.close()
    frame = await b_ws.expect("presence", lambda f: f.get("user_id") == a.id and f.get("online") is False)
    assert frame["online"] is False

    await d_ws.assert_quiet("presence", lambda f: f.get("user_id") == a.id)
