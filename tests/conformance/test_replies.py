"""Replies (protocol v1.1 §2, §4): `send` with `reply_to`, the stored message carrying
it, and `GET .../messages?reply_to=` listing the answers. Against a cluster, the
replying member is connected to the other node than the one answered."""

from __future__ import annotations

import uuid

import pytest

from chorus_helpers import assert_error, assert_status, cmid

pytestmark = pytest.mark.asyncio


async def send_reply(ws, conv_id: str, body: str, reply_to) -> str:
    key = cmid()
    await ws.send(
        {"type": "send", "client_msg_id": key, "conversation_id": conv_id, "body": body, "reply_to": reply_to}
    )
    return key


async def test_a_reply_carries_what_it_answers_live_in_history_and_in_the_answers(nodes):
    writer, reader = nodes
    a, b, c = await writer.users(3, "rp")
    group = await writer.group(a, [b, c])
    a_ws = await writer.connect(a)
    b_ws = await reader.connect(b)
    question = await a_ws.send_msg(group["id"], "lunch at noon?")
    original = await b_ws.expect_message(group["id"], lambda m: m["client_msg_id"] == question)
    assert original["reply_to"] is None, original
    other = await a_ws.send_msg(group["id"], "unrelated")
    await b_ws.expect_message(group["id"], lambda m: m["client_msg_id"] == other)

    key = await send_reply(b_ws, group["id"], "yes", original["message_id"])
    await b_ws.expect_accepted(key)
    live = await a_ws.expect_message(group["id"], lambda m: m["client_msg_id"] == key)
    assert live["reply_to"] == original["message_id"], live
    resp = await writer.post(
        f"/conversations/{group['id']}/messages",
        c.token,
        json={"client_msg_id": cmid(), "body": "me too", "reply_to": original["message_id"]},
    )
    assert_status(resp, 202)
    await a_ws.expect_message(group["id"], lambda m: m["body"] == "me too")

    history = await reader.history(c, group["id"])
    assert [m["reply_to"] for m in history] == [None, None, original["message_id"], original["message_id"]]
    answers = await reader.history(c, group["id"], reply_to=original["message_id"])
    assert [m["body"] for m in answers] == ["yes", "me too"], answers
    later = await writer.history(a, group["id"], reply_to=original["message_id"], after_seq=answers[0]["seq"])
    assert [m["body"] for m in later] == ["me too"], later
    assert await writer.history(a, group["id"], reply_to=str(uuid.uuid4())) == []


async def test_a_reply_to_what_is_not_in_the_conversation_is_not_found(nodes):
    writer, reader = nodes
    a, b, c = await writer.users(3, "rn")
    ab = await writer.direct(a, b.id)
    ac = await writer.direct(a, c.id)
    a_ws = await writer.connect(a)
    key = await a_ws.send_msg(ac["id"], "elsewhere")
    elsewhere = await a_ws.expect_message(ac["id"], lambda m: m["client_msg_id"] == key)

    a2 = await reader.connect(a)
    for target in (elsewhere["message_id"], str(uuid.uuid4())):
        key = await send_reply(a2, ab["id"], "re", target)
        await a2.expect_error("not_found", key)
    resp = await reader.post(
        f"/conversations/{ab['id']}/messages",
        a.token,
        json={"client_msg_id": cmid(), "body": "re", "reply_to": elsewhere["message_id"]},
    )
    assert_error(resp, 404, "not_found")
    assert await reader.history(b, ab["id"]) == [], "nothing stored"
    # A reply_to that is not a UUID is a bad frame.
    await a2.send({"type": "send", "client_msg_id": cmid(), "conversation_id": ab["id"], "body": "re", "reply_to": 7})
    await a2.expect_error("bad_request")
