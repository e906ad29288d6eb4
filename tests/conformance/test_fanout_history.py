"""Concurrent senders, fan-out to every session exactly once in seq order, and history
pagination over the same messages."""

import asyncio

import pytest
import pytest_asyncio

from chorus_helpers import assert_error, assert_same_message

pytestmark = pytest.mark.asyncio

PER_SENDER = 100
TOTAL = 2 * PER_SENDER


async def _send_all(ws, conv_id: str, tag: str) -> dict[str, str]:
    """Sends PER_SENDER messages back to back; returns {client_msg_id: body}."""
    sent = {}
    for i in range(PER_SENDER):
        body = f"{tag} #{i} ✓"
        sent[await ws.send_msg(conv_id, body)] = body
    return sent


async def _accepted(ws, sent: dict[str, str]) -> dict[str, str]:
    """{client_msg_id: message_id} from the `accepted` frames."""
    return {c: await ws.expect_accepted(c, timeout=30) for c in sent}


@pytest_asyncio.fixture
async def busy_group(api):
    """A group of three with 200 messages sent concurrently by two members, one of whom
    has two sessions; returns everything the sessions received."""
    a, b, c = await api.users(3, "fan")
    conv = await api.group(a, [b, c])
    sessions = {
        "a1": await api.connect(a, name="a1"),
        "a2": await api.connect(a, name="a2", via="query"),
        "b": await api.connect(b, name="b"),
        "c": await api.connect(c, name="c"),
    }
    sent_a, sent_b = await asyncio.gather(
        _send_all(sessions["a1"], conv["id"], "from-a"),
        _send_all(sessions["b"], conv["id"], "from-b"),
    )
    ids_a, ids_b = await asyncio.gather(
        _accepted(sessions["a1"], sent_a), _accepted(sessions["b"], sent_b)
    )
    received = dict(
        zip(
            sessions,
            await asyncio.gather(
                *(s.collect_messages(conv["id"], TOTAL, timeout=60) for s in sessions.values())
            ),
        )
    )
    return {
        "users": (a, b, c),
        "conv": conv,
        "sessions": sessions,
        "sent": {**sent_a, **sent_b},
        "senders": {**{k: a.id for k in sent_a}, **{k: b.id for k in sent_b}},
        "message_ids": {**ids_a, **ids_b},
        "received": received,
    }


async def test_every_session_gets_every_message_once_in_order(busy_group):
    g = busy_group
    conv_id = g["conv"]["id"]
    assert len(set(g["message_ids"].values())) == TOTAL, "message ids are not unique"

    for name, messages in g["received"].items():
        seqs = [m["seq"] for m in messages]
        assert all(x < y for x, y in zip(seqs, seqs[1:])), f"{name}: seqs not increasing: {seqs}"
        assert seqs == list(range(1, TOTAL + 1)), f"{name}: seqs not 1..{TOTAL}: {seqs}"
        for m in messages:
            cid = m["client_msg_id"]
            assert cid in g["sent"], f"{name}: unknown message {m!r}"
            assert m["body"] == g["sent"][cid]
            assert m["sender_id"] == g["senders"][cid]
            assert m["message_id"] == g["message_ids"][cid]
            assert m["origin"] == "user"
            assert m["conversation_id"] == conv_id
        assert {m["client_msg_id"] for m in messages} == set(g["sent"])

    # All sessions saw the same messages; and no session gets a duplicate afterwards.
    reference = g["received"]["a1"]
    for name, messages in g["received"].items():
        for x, y in zip(reference, messages):
            assert_same_message(x, y)
        await g["sessions"][name].assert_quiet("message", lambda f: f["message"]["conversation_id"] == conv_id)

    listed = await g["sessions"]["a1"].sync({})
    assert listed[1]["last_seq"].get(conv_id) == TOTAL


async def test_history_pagination_returns_the_same_messages(api, busy_group):
    g = busy_group
    a, b, c = g["users"]
    conv_id = g["conv"]["id"]
    by_seq = {m["seq"]: m for m in g["received"]["a1"]}

    def check(page, seqs):
        assert [m["seq"] for m in page] == list(seqs), [m["seq"] for m in page]
        for m in page:
            assert_same_message(m, by_seq[m["seq"]])

    # Forward pages of 50 with after_seq.
    pages = []
    after = 0
    while True:
        page = await api.history(c, conv_id, after_seq=after, limit=50)
        if not page:
            break
        assert len(page) == 50
        pages.append(page)
        after = page[-1]["seq"]
    assert len(pages) == TOTAL // 50
    check([m for p in pages for m in p], range(1, TOTAL + 1))

    # Backward pages with before_seq: the last `limit` before it, still ascending.
    before = TOTAL + 1
    collected = []
    while True:
        page = await api.history(b, conv_id, before_seq=before, limit=50)
        if not page:
            break
        check(page, range(before - 50, before))
        collected = page + collected
        before = page[0]["seq"]
    check(collected, range(1, TOTAL + 1))
    assert before == 1

    # Defaults: the last 50.
    check(await api.history(a, conv_id), range(TOTAL - 49, TOTAL + 1))
    check(await api.history(a, conv_id, limit=7), range(TOTAL - 6, TOTAL + 1))
    check(await api.history(a, conv_id, before_seq=20, limit=5), range(15, 20))
    check(await api.history(a, conv_id, after_seq=10), range(11, 61))

    # Both bounds: the first `limit` after after_seq, below before_seq.
    check(await api.history(a, conv_id, after_seq=10, before_seq=20), range(11, 20))
    check(await api.history(a, conv_id, after_seq=10, before_seq=20, limit=5), range(11, 16))
    check(await api.history(a, conv_id, after_seq=TOTAL), [])
    check(await api.history(a, conv_id, after_seq=TOTAL - 3, limit=10), range(TOTAL - 2, TOTAL + 1))

    # Large limits: 500 is the maximum, and more is clamped rather than refused.
    check(await api.history(a, conv_id, after_seq=0, limit=500), range(1, TOTAL + 1))
    check(await api.history(a, conv_id, after_seq=0, limit=100000), range(1, TOTAL + 1))
    check(await api.history(a, conv_id, limit=1000), range(1, TOTAL + 1))

    path = f"/conversations/{conv_id}/messages"
    for bad in ("0", "-1", "-50", "abc"):
        assert_error(await api.get(path, a.token, params={"limit": bad}), 400, "bad_request")
