"""Direct and group conversations, members, and who may do what."""

import uuid

import pytest

from chorus_helpers import (
    assert_conversation_shape,
    assert_error,
    assert_status,
    parse_time,
)

pytestmark = pytest.mark.asyncio


async def test_direct_is_created_once_per_pair(api):
    a, b = await api.users(2, "dm")
    resp = await api.post("/conversations", a.token, json={"kind": "direct", "members": [b.id]})
    conv = assert_status(resp, 201)
    assert_conversation_shape(conv)
    assert conv["kind"] == "direct"
    assert conv["title"] is None
    assert sorted(conv["members"]) == sorted([a.id, b.id])
    assert conv["last_seq"] == 0
    assert conv["unread"] == 0
    parse_time(conv["created_at"])

    # The same creator again, then the other user: the same conversation, 200.
    again = assert_status(
        await api.post("/conversations", a.token, json={"kind": "direct", "members": [b.id]}), 200
    )
    assert again["id"] == conv["id"]
    reverse = assert_status(
        await api.post("/conversations", b.token, json={"kind": "direct", "members": [a.id]}), 200
    )
    assert reverse["id"] == conv["id"]
    assert sorted(reverse["members"]) == sorted([a.id, b.id])

    # Each sees it exactly once.
    for user in (a, b):
        listed = [c for c in await api.conversations(user) if c["id"] == conv["id"]]
        assert len(listed) == 1, listed
        assert_conversation_shape(listed[0])
        assert listed[0]["kind"] == "direct"


async def test_direct_errors(api):
    a = await api.new_user("dm")
    assert_error(
        await api.post("/conversations", a.token, json={"kind": "direct", "members": [a.id]}),
        400,
        "bad_request",
    )
    assert_error(
        await api.post(
            "/conversations", a.token, json={"kind": "direct", "members": [str(uuid.uuid4())]}
        ),
        404,
        "not_found",
    )
    assert_error(
        await api.post("/conversations", a.token, json={"kind": "direct", "members": []}),
        400,
        "bad_request",
    )
    assert_error(
        await api.post("/conversations", a.token, json={"kind": "direct", "members": ["not-a-uuid"]}),
        400,
        "bad_request",
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"kind": "channel", "members": []},
        {"members": []},
        {"kind": "group", "title": "t", "members": "nope"},
        {"kind": "group", "title": "t", "members": ["not-a-uuid"]},
    ],
)
async def test_create_conversation_invalid_fields(api, payload):
    a = await api.new_user("cv")
    assert_error(await api.post("/conversations", a.token, json=payload), 400, "bad_request")


async def test_create_conversation_malformed_json(api):
    a = await api.new_user("cv")
    assert_error(await api.post("/conversations", a.token, content=b"{"), 400, "bad_request")


async def test_conversations_require_auth(api):
    assert_error(await api.get("/conversations"), 401, "unauthorized")
    assert_error(
        await api.post("/conversations", json={"kind": "group", "title": "t", "members": []}),
        401,
        "unauthorized",
    )
    assert_error(await api.get(f"/conversations/{uuid.uuid4()}", "garbage"), 401, "unauthorized")


async def test_group_creation(api):
    a, b, c = await api.users(3, "grp")
    resp = await api.post(
        "/conversations", a.token, json={"kind": "group", "title": "Team", "members": [b.id, c.id]}
    )
    conv = assert_status(resp, 201)
    assert_conversation_shape(conv)
    assert conv["kind"] == "group"
    assert conv["title"] == "Team"
    assert conv["owner_id"] == a.id
    assert sorted(conv["members"]) == sorted([a.id, b.id, c.id])
    assert (conv["last_seq"], conv["unread"]) == (0, 0)

    # Groups are not deduplicated.
    second = await api.group(a, [b, c], title="Team")
    assert second["id"] != conv["id"]

    # An empty member list: the creator alone.
    alone = assert_status(
        await api.post("/conversations", a.token, json={"kind": "group", "title": "Solo", "members": []}),
        201,
    )
    assert alone["members"] == [a.id]
    assert alone["owner_id"] == a.id

    for user in (a, b, c):
        fetched = assert_status(await api.get(f"/conversations/{conv['id']}", user.token), 200)
        assert_conversation_shape(fetched)
        assert fetched["id"] == conv["id"]
        assert fetched["title"] == "Team"
        assert fetched["owner_id"] == a.id
        assert sorted(fetched["members"]) == sorted(conv["members"])
        listed = await api.conversation_of(user, conv["id"])
        assert listed is not None
        for field in ("id", "kind", "title", "members", "last_seq", "unread"):
            assert field in listed, (field, listed)

    listed_ids = {x["id"] for x in await api.conversations(b)}
    assert alone["id"] not in listed_ids
    assert {conv["id"], second["id"]} <= listed_ids


async def test_conversation_access(api):
    a, b, outsider = await api.users(3, "acc")
    group = await api.group(a, [b])
    direct = await api.direct(a, b.id)

    for conv in (group, direct):
        assert_error(await api.get(f"/conversations/{conv['id']}", outsider.token), 403, "forbidden")
        assert_error(
            await api.get(f"/conversations/{conv['id']}/messages", outsider.token), 403, "forbidden"
        )
        assert_error(await api.send_http(outsider, conv["id"], "hi"), 403, "forbidden")
    assert group["id"] not in {c["id"] for c in await api.conversations(outsider)}

    unknown = str(uuid.uuid4())
    assert_error(await api.get(f"/conversations/{unknown}", a.token), 404, "not_found")
    assert_error(await api.get(f"/conversations/{unknown}/messages", a.token), 404, "not_found")
    assert_error(await api.send_http(a, unknown, "hi"), 404, "not_found")
    assert_error(
        await api.post(f"/conversations/{unknown}/members", a.token, json={"user_id": b.id}),
        404,
        "not_found",
    )
    assert_error(await api.delete(f"/conversations/{unknown}/members/{b.id}", a.token), 404, "not_found")

    assert_error(await api.get("/conversations/not-a-uuid", a.token), 400, "bad_request")
    assert_error(await api.get("/conversations/not-a-uuid/messages", a.token), 400, "bad_request")
    assert_error(await api.send_http(a, "not-a-uuid", "hi"), 400, "bad_request")
    assert_error(
        await api.post("/conversations/not-a-uuid/members", a.token, json={"user_id": b.id}),
        400,
        "bad_request",
    )
    assert_error(await api.delete(f"/conversations/not-a-uuid/members/{b.id}", a.token), 400, "bad_request")


async def test_owner_adds_members(api):
    owner, member, newcomer, other = await api.users(4, "add")
    conv = await api.group(owner, [member])
    path = f"/conversations/{conv['id']}/members"

    # Before: the newcomer is an outsider.
    assert_error(await api.get(f"/conversations/{conv['id']}", newcomer.token), 403, "forbidden")

    updated = assert_status(await api.post(path, owner.token, json={"user_id": newcomer.id}), 200)
    assert_conversation_shape(updated)
    assert updated["id"] == conv["id"]
    assert sorted(updated["members"]) == sorted([owner.id, member.id, newcomer.id])

    fetched = assert_status(await api.get(f"/conversations/{conv['id']}", newcomer.token), 200)
    assert newcomer.id in fetched["members"]
    assert conv["id"] in {c["id"] for c in await api.conversations(newcomer)}

    # A member who is not the owner, and an outsider, may not add.
    assert_error(await api.post(path, member.token, json={"user_id": other.id}), 403, "forbidden")
    assert_error(await api.post(path, other.token, json={"user_id": other.id}), 403, "forbidden")
    fetched = assert_status(await api.get(f"/conversations/{conv['id']}", owner.token), 200)
    assert other.id not in fetched["members"]

    # Invalid bodies.
    assert_error(await api.post(path, owner.token, json={}), 400, "bad_request")
    assert_error(await api.post(path, owner.token, json={"user_id": "not-a-uuid"}), 400, "bad_request")


async def test_remove_members_and_leave(api):
    owner, b, c, d, outsider = await api.users(5, "rm")
    conv = await api.group(owner, [b, c, d])
    base = f"/conversations/{conv['id']}/members"

    # A plain member may not remove someone else; neither may an outsider.
    assert_error(await api.delete(f"{base}/{c.id}", b.token), 403, "forbidden")
    assert_error(await api.delete(f"{base}/{c.id}", outsider.token), 403, "forbidden")

    # A member leaves.
    resp = await api.delete(f"{base}/{c.id}", c.token)
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    assert_error(await api.get(f"/conversations/{conv['id']}", c.token), 403, "forbidden")
    assert conv["id"] not in {x["id"] for x in await api.conversations(c)}

    # The owner removes someone.
    resp = await api.delete(f"{base}/{b.id}", owner.token)
    assert resp.status_code == 204, resp.text
    assert_error(await api.get(f"/conversations/{conv['id']}", b.token), 403, "forbidden")
    assert_error(await api.send_http(b, conv["id"], "still here?"), 403, "forbidden")

    fetched = assert_status(await api.get(f"/conversations/{conv['id']}", owner.token), 200)
    assert sorted(fetched["members"]) == sorted([owner.id, d.id])

    assert_error(await api.delete(f"{base}/not-a-uuid", owner.token), 400, "bad_request")


async def test_members_endpoints_refuse_direct(api):
    a, b, c = await api.users(3, "dmm")
    direct = await api.direct(a, b.id)
    base = f"/conversations/{direct['id']}/members"
    assert_error(await api.post(base, a.token, json={"user_id": c.id}), 400, "bad_request")
    assert_error(await api.delete(f"{base}/{b.id}", a.token), 400, "bad_request")
    assert_error(await api.delete(f"{base}/{a.id}", a.token), 400, "bad_request")
    fetched = assert_status(await api.get(f"/conversations/{direct['id']}", a.token), 200)
    assert sorted(fetched["members"]) == sorted([a.id, b.id])
