"""Edits, deletes and reactions (protocol v1.1 §1, §2): each is an entry of the
conversation's stream with its own `seq`, delivered live, in history and in `sync`, under
the rules of §2. Against a cluster, the member who changes a message is connected to
the other node than the one who sent it."""

from __future__ import annotations

import uuid

import pytest

from chorus_helpers import assert_error, assert_status, cmid, eventually

pytestmark = pytest.mark.asyncio


def edit_frame(conv_id: str, target: str, body, key: str | None = None) -> dict:
    return {"type": "edit", "client_msg_id": key or cmid(), "conversation_id": conv_id, "message_id": target, "body": body}


def delete_frame(conv_id: str, target: str, key: str | None = None) -> dict:
    return {"type": "delete", "client_msg_id": key or cmid(), "conversation_id": conv_id, "message_id": target}


def react_frame(conv_id: str, target: str, emoji, remove: bool = False, key: str | None = None) -> dict:
    return {
        "type": "react",
        "client_msg_id": key or cmid(),
        "conversation_id": conv_id,
        "message_id": target,
        "emoji": emoji,
        "remove": remove,
    }


async def change(ws, frame: dict) -> dict:
    """Sends a change and returns its answer (`accepted` or `error`)."""
    await ws.send(frame)
    return await ws.expect_answer(frame["client_msg_id"])


async def accepted(ws, frame: dict, unchanged: bool = False) -> str:
    answer = await change(ws, frame)
    assert answer["type"] == "accepted", answer
    assert answer.get("unchanged", False) is unchanged, answer
    return answer["message_id"]


async def stored(ws, frame: dict) -> dict:
    """Sends a change and waits for its entry to come back stored."""
    entry_id = await accepted(ws, frame)
    return await ws.expect_message(frame["conversation_id"], lambda m: m["message_id"] == entry_id)


async def refused(ws, frame: dict, code: str) -> None:
    answer = await change(ws, frame)
    assert answer["type"] == "error" and answer["code"] == code, answer


async def posted(ws, conv_id: str, body: str) -> dict:
    key = await ws.send_msg(conv_id, body)
    return await ws.expect_message(conv_id, lambda m: m["client_msg_id"] == key)


async def test_an_edit_is_an_entry_of_its_own_seen_live_in_history_and_in_sync(nodes):
    writer, reader = nodes
    a, b = await writer.users(2, "ed")
    group = await writer.group(a, [b])
    a_ws = await reader.connect(a)
    b_ws = await writer.connect(b)
    original = await posted(a_ws, group["id"], "helo wrold")
    await b_ws.expect_message(group["id"], lambda m: m["message_id"] == original["message_id"])

    frame = edit_frame(group["id"], original["message_id"], f"hello world, @{b.username}")
    entry_id = await accepted(a_ws, frame)
    live = await b_ws.expect_message(group["id"], lambda m: m["message_id"] == entry_id)
    assert live["kind"] == "edit" and live["target_id"] == original["message_id"], live
    assert live["body"] == f"hello world, @{b.username}" and live["seq"] == original["seq"] + 1, live
    assert live["mentions"] == [b.id], live
    assert live["sender_id"] == a.id, live

    retry_id = await accepted(a_ws, frame)
    assert retry_id == entry_id, "a retried edit is the same entry"
    history = await writer.history(b, group["id"])
    assert [m["kind"] for m in history] == ["text", "edit"], history
    text = history[0]
    assert text["body"] == "helo wrold", "the message entry keeps its body: the edit carries the new one"
    assert text["edited_at"] is not None, text
    assert text["deleted"] is False

    b2 = await reader.connect(b)
    frames, synced = await b2.sync({group["id"]: original["seq"]})
    replayed = [f["message"] for f in frames if f["type"] == "message"]
    assert [m["message_id"] for m in replayed] == [entry_id], replayed
    assert synced["last_seq"][group["id"]] == live["seq"]

    resp = await writer.patch(
        f"/conversations/{group['id']}/messages/{original['message_id']}",
        a.token,
        json={"client_msg_id": cmid(), "body": "hello world"},
    )
    body = assert_status(resp, 202)
    await b_ws.expect_message(group["id"], lambda m: m["message_id"] == body["message_id"] and m["kind"] == "edit")


async def test_only_the_sender_edits_a_message_of_the_conversation_that_is_not_deleted(nodes):
    writer, reader = nodes
    a, b, x = await writer.users(3, "er")
    group = await writer.group(a, [b])
    elsewhere = await writer.direct(a, x.id)
    a_ws = await writer.connect(a)
    b_ws = await reader.connect(b)
    x_ws = await reader.connect(x)
    mine = await posted(a_ws, group["id"], "mine")
    theirs = await posted(a_ws, elsewhere["id"], "in another conversation")
    entry = await accepted(a_ws, edit_frame(group["id"], mine["message_id"], "mine!"))

    await refused(b_ws, edit_frame(group["id"], mine["message_id"], "not yours"), "forbidden")
    await refused(x_ws, edit_frame(group["id"], mine["message_id"], "not a member"), "forbidden")
    await refused(a_ws, edit_frame(group["id"], theirs["message_id"], "wrong conversation"), "not_found")
    await refused(a_ws, edit_frame(group["id"], str(uuid.uuid4()), "no such message"), "not_found")
    await refused(a_ws, edit_frame(group["id"], entry, "an edit is not a message"), "not_found")
    await refused(a_ws, edit_frame(str(uuid.uuid4()), mine["message_id"], "no conversation"), "not_found")
    await refused(a_ws, edit_frame(group["id"], mine["message_id"], ""), "bad_request")
    await refused(a_ws, edit_frame(group["id"], mine["message_id"], "x" * 20_000), "too_large")
    await a_ws.send({"type": "edit", "client_msg_id": cmid(), "conversation_id": group["id"], "body": "no target"})
    await a_ws.expect_error("bad_request")

    await stored(a_ws, delete_frame(group["id"], mine["message_id"]))
    await refused(a_ws, edit_frame(group["id"], mine["message_id"], "too late"), "not_found")
    resp = await reader.patch(
        f"/conversations/{group['id']}/messages/{mine['message_id']}",
        b.token,
        json={"client_msg_id": cmid(), "body": "x"},
    )
    assert_error(resp, 403, "forbidden")
    kinds = [m["kind"] for m in await writer.history(a, group["id"])]
    assert kinds == ["text", "edit", "delete"], kinds


async def test_a_delete_erases_the_message_everywhere_and_says_so(nodes):
    writer, reader = nodes
    a, b = await writer.users(2, "de")
    direct = await writer.direct(a, b.id)
    a_ws = await writer.connect(a)
    b_ws = await reader.connect(b)
    upload = assert_status(
        await writer.post("/attachments", a.token, params={"name": "plan.txt"}, content=b"the plan", headers={"Content-Type": "text/plain"}),
        201,
    )
    key = cmid()
    await a_ws.send(
        {"type": "send", "client_msg_id": key, "conversation_id": direct["id"], "body": "secret plan", "attachments": [upload["attachment_id"]]}
    )
    original = await b_ws.expect_message(direct["id"], lambda m: m["client_msg_id"] == key)
    await accepted(a_ws, edit_frame(direct["id"], original["message_id"], "secret plan, v2"))

    frame = delete_frame(direct["id"], original["message_id"])
    delete_id = await accepted(a_ws, frame)
    live = await b_ws.expect_message(direct["id"], lambda m: m["message_id"] == delete_id)
    assert live["kind"] == "delete" and live["target_id"] == original["message_id"] and live["body"] == "", live
    assert await accepted(a_ws, frame) == delete_id, "a retry is the same entry"
    again = delete_frame(direct["id"], original["message_id"])
    await accepted(a_ws, again, unchanged=True)

    history = await reader.history(b, direct["id"])
    assert [m["kind"] for m in history] == ["text", "edit", "delete"], history
    text, edit, _ = history
    assert text["deleted"] is True and text["body"] == "" and text["attachments"] == [], text
    assert edit["body"] == "", "the edit's body is erased too"
    assert all("secret" not in m["body"] for m in history)
    found = assert_status(await reader.get("/search", b.token, params={"q": "secret"}), 200)
    assert found["results"] == [], found
    resp = await reader.get(f"/attachments/{upload['attachment_id']}", b.token)
    assert_error(resp, 404, "not_found")
    frames, _ = await (await writer.connect(b)).sync({direct["id"]: 0})
    replayed = [f["message"] for f in frames if f["type"] == "message"]
    assert len(replayed) == 3 and all("secret" not in m["body"] for m in replayed), replayed


async def test_the_sender_or_the_groups_owner_deletes_a_message(nodes):
    writer, reader = nodes
    owner, b, c = await writer.users(3, "dp")
    group = await writer.group(owner, [b, c])
    owner_ws = await writer.connect(owner)
    b_ws = await reader.connect(b)
    c_ws = await reader.connect(c)
    by_b = await posted(b_ws, group["id"], "b's")
    by_b2 = await posted(b_ws, group["id"], "b's second")
    await refused(c_ws, delete_frame(group["id"], by_b["message_id"]), "forbidden")
    await accepted(owner_ws, delete_frame(group["id"], by_b["message_id"]))
    resp = await writer.delete(
        f"/conversations/{group['id']}/messages/{by_b2['message_id']}",
        b.token,
        params={"client_msg_id": cmid()},
    )
    assert "message_id" in assert_status(resp, 202)

    direct = await writer.direct(owner, b.id)
    in_direct = await posted(b_ws, direct["id"], "direct")
    await refused(owner_ws, delete_frame(direct["id"], in_direct["message_id"]), "forbidden")
    resp = await writer.delete(f"/conversations/{direct['id']}/messages/{in_direct['message_id']}", owner.token, params={"client_msg_id": cmid()})
    assert_error(resp, 403, "forbidden")

    async def both_deleted():
        history = await reader.history(c, group["id"])
        assert [m["deleted"] for m in history if m["kind"] == "text"] == [True, True], history

    await eventually(both_deleted)


async def test_reactions_are_one_per_member_and_emoji(nodes):
    writer, reader = nodes
    a, b, x = await writer.users(3, "re")
    group = await writer.group(a, [b])
    a_ws = await writer.connect(a)
    b_ws = await reader.connect(b)
    x_ws = await reader.connect(x)
    target = (await posted(a_ws, group["id"], "lunch?"))["message_id"]

    first = await accepted(b_ws, react_frame(group["id"], target, "👍"))
    live = await a_ws.expect_message(group["id"], lambda m: m["message_id"] == first)
    assert (live["kind"], live["target_id"], live["emoji"], live["remove"], live["body"]) == ("reaction", target, "👍", False, ""), live
    await accepted(b_ws, react_frame(group["id"], target, "👍"), unchanged=True)
    await accepted(b_ws, react_frame(group["id"], target, "🎉", remove=True), unchanged=True)
    await accepted(a_ws, react_frame(group["id"], target, "👍"))
    back = await accepted(b_ws, react_frame(group["id"], target, "👍", remove=True))
    taken = await a_ws.expect_message(group["id"], lambda m: m["message_id"] == back)
    assert taken["remove"] is True, taken
    resp = await reader.post(
        f"/conversations/{group['id']}/messages/{target}/reactions",
        b.token,
        json={"client_msg_id": cmid(), "emoji": "🎉"},
    )
    assert "message_id" in assert_status(resp, 202)

    for bad in ("", "a b", "x" * 65):
        await refused(b_ws, react_frame(group["id"], target, bad), "bad_request")
    await b_ws.send(react_frame(group["id"], target, 7))
    await b_ws.expect_error("bad_request")
    await refused(x_ws, react_frame(group["id"], target, "👍"), "forbidden")
    reaction_entry = first
    await refused(b_ws, react_frame(group["id"], reaction_entry, "👍"), "not_found")
    await stored(a_ws, delete_frame(group["id"], target))
    await refused(b_ws, react_frame(group["id"], target, "👍"), "not_found")

    async def folded():
        history = await writer.history(a, group["id"])
        reactions = [(m["sender_id"], m["emoji"], m["remove"]) for m in history if m["kind"] == "reaction"]
        assert reactions == [(b.id, "👍", False), (a.id, "👍", False), (b.id, "👍", True), (b.id, "🎉", False)], reactions

    await eventually(folded)


async def test_unread_counts_messages_not_changes(nodes):
    writer, reader = nodes
    a, b = await writer.users(2, "un")
    direct = await writer.direct(a, b.id)
    a_ws = await writer.connect(a)
    one = await posted(a_ws, direct["id"], "one")
    two = await posted(a_ws, direct["id"], "two")
    await accepted(a_ws, edit_frame(direct["id"], one["message_id"], "one!"))
    await accepted(a_ws, react_frame(direct["id"], one["message_id"], "👀"))
    last = await accepted(a_ws, delete_frame(direct["id"], two["message_id"]))
    await a_ws.expect_message(direct["id"], lambda m: m["message_id"] == last)

    async def counted():
        mine = await reader.conversation_of(b, direct["id"])
        assert (mine["last_seq"], mine["unread"]) == (5, 1), mine

    await eventually(counted)


async def test_a_change_racing_the_delete_of_its_message_is_refused_even_after_accepted(nodes):
    writer, _ = nodes
    a, b = await writer.users(2, "rc")
    direct = await writer.direct(a, b.id)
    a_ws = await writer.connect(a)
    target = (await posted(a_ws, direct["id"], "going"))["message_id"]
    delete = delete_frame(direct["id"], target)
    edit = edit_frame(direct["id"], target, "too late")
    # Back to back: the edit may be checked before the delete is stored, and accepted;
    # then its `error` follows once the store finds the message deleted.
    await a_ws.send(delete)
    await a_ws.send(edit)
    await a_ws.expect_error("not_found", edit["client_msg_id"])
    history = await writer.history(b, direct["id"])
    assert [m["kind"] for m in history] == ["text", "delete"], history
