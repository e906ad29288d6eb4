"""Reconnecting and catching up with `sync`."""

import pytest

from chorus_helpers import assert_same_message

pytestmark = pytest.mark.asyncio

MISSED = 30


async def test_reconnect_and_sync_replays_exactly_what_was_missed(api):
    a, b = await api.users(2, "sync")
    group = await api.group(b, [a])
    direct = await api.direct(b, a.id)
    empty = await api.group(a, [])  # a conversation with no messages at all

    a_ws = await api.connect(a)
    b_ws = await api.connect(b)

    # A sees the first five.
    for i in range(5):
        await b_ws.send_msg(group["id"], f"before {i}")
    seen = await a_ws.collect_messages(group["id"], 5)
    last_seen = max(m["seq"] for m in seen)
    assert last_seen == 5

    await a_ws.close()

    # While A is away: 30 in the group, 2 in the direct conversation.
    missed_keys = [await b_ws.send_msg(group["id"], f"missed {i}") for i in range(MISSED)]
    direct_keys = [await b_ws.send_msg(direct["id"], f"direct {i}") for i in range(2)]
    for key in missed_keys + direct_keys:
        await b_ws.expect_accepted(key)
    # B's own session sees them stored.
    await b_ws.collect_messages(group["id"], 5 + MISSED)
    await b_ws.collect_messages(direct["id"], 2)

    a_again = await api.connect(a, via="query")
    before, synced = await a_again.sync({group["id"]: last_seen})

    replayed = [f["message"] for f in before if f.get("type") == "message"]
    assert [m["conversation_id"] for m in replayed] == [group["id"]] * MISSED, (
        "only the named conversation is replayed, and only after its last seen seq"
    )
    assert [m["seq"] for m in replayed] == list(range(last_seen + 1, last_seen + MISSED + 1))
    assert {m["client_msg_id"] for m in replayed} == set(missed_keys)
    assert not [f for f in before if f.get("type") == "error"], before

    assert synced["last_seq"] == {
        group["id"]: last_seen + MISSED,
        direct["id"]: 2,
        empty["id"]: 0,
    }
    if "online" in synced:
        assert isinstance(synced["online"], list)

    history = await api.history(a, group["id"], after_seq=last_seen, limit=MISSED)
    for h, r in zip(history, replayed, strict=True):
        assert_same_message(h, r)

    # Nothing more comes (no live duplicates of the replay).
    await a_again.assert_quiet("message")

    # Catching up the conversation it did not name.
    before, synced = await a_again.sync({direct["id"]: 0})
    replayed = [f["message"] for f in before if f.get("type") == "message"]
    assert [(m["conversation_id"], m["seq"]) for m in replayed] == [(direct["id"], 1), (direct["id"], 2)]
    assert {m["client_msg_id"] for m in replayed} == set(direct_keys)
    assert synced["last_seq"][group["id"]] == last_seen + MISSED

    # A seq at or beyond the end replays nothing.
    before, synced = await a_again.sync({group["id"]: last_seen + MISSED, direct["id"]: 2})
    assert [f for f in before if f.get("type") == "message"] == []


async def test_sync_with_nothing_named_reports_every_conversation(api):
    a, b = await api.users(2, "sync")
    g1 = await api.group(a, [b])
    g2 = await api.group(b, [a])
    ws = await api.connect(a)
    assert (await api.send_http(b, g2["id"], "one")).status_code == 202
    await ws.expect_message(g2["id"])  # stored

    before, synced = await ws.sync({})
    assert [f for f in before if f.get("type") == "message"] == []
    assert synced["last_seq"] == {g1["id"]: 0, g2["id"]: 1}


async def test_sync_naming_a_foreign_conversation(api):
    a, outsider = await api.users(2, "sync")
    mine = await api.group(a)
    theirs = await api.group(outsider)
    assert (await api.send_http(outsider, theirs["id"], "secret")).status_code == 202

    ws = await api.connect(a)
    before, synced = await ws.sync({theirs["id"]: 0, mine["id"]: 0})
    errors = [f for f in before if f.get("type") == "error"]
    assert len(errors) == 1, before
    assert errors[0].get("code") in ("forbidden", "not_found"), errors
    assert isinstance(errors[0].get("message"), str)
    assert [f for f in before if f.get("type") == "message"] == [], "a foreign conversation leaked"
    assert synced["last_seq"] == {mine["id"]: 0}
