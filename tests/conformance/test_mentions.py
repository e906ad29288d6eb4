"""Mentions (protocol v1.1 §1, §4): the server finds the members named as @username,
and each member's conversation counts the mentions after their read marker. Against a
cluster, the writer and the named member are on different nodes."""

from __future__ import annotations

import pytest

from chorus_helpers import eventually

pytestmark = pytest.mark.asyncio


async def test_members_named_are_mentioned_and_counted_until_read(nodes):
    writer, reader = nodes
    a, b, c, x = await writer.users(4, "mn")
    group = await writer.group(a, [b, c])
    a_ws = await writer.connect(a)
    b_ws = await reader.connect(b)
    body = f"@{c.username} @{b.username}: see @{x.username}, and @{c.username} again"
    key = await a_ws.send_msg(group["id"], body)
    got = await b_ws.expect_message(group["id"], lambda m: m["client_msg_id"] == key)
    assert got["mentions"] == [c.id, b.id], got
    key2 = await a_ws.send_msg(group["id"], "no names, mail a@example.com")
    got2 = await b_ws.expect_message(group["id"], lambda m: m["client_msg_id"] == key2)
    assert got2["mentions"] == [], got2

    mine = await reader.conversation_of(b, group["id"])
    assert mine["mentions_unread"] == 1, mine
    assert (await writer.conversation_of(a, group["id"]))["mentions_unread"] == 0
    await b_ws.send({"type": "read", "conversation_id": group["id"], "seq": got2["seq"]})

    async def read():
        now = await writer.conversation_of(b, group["id"])
        assert now["mentions_unread"] == 0, now

    await eventually(read)
