"""Search (protocol v1.1 §4): `GET /search` finds the messages of the caller's
conversations whose current body has every word of `q` as a word prefix, case and
accents aside, newest first; deleted messages never match. Against a cluster, messages
are sent through one node and searched through the other."""

from __future__ import annotations

import uuid

import pytest

from chorus_helpers import assert_error, assert_message_shape, assert_status, cmid, eventually, unique

pytestmark = pytest.mark.asyncio


async def search(api, user, **params) -> list[dict]:
    body = assert_status(await api.get("/search", user.token, params=params), 200)
    assert isinstance(body.get("results"), list), body
    for m in body["results"]:
        assert_message_shape(m)
        assert m["kind"] == "text" and not m["deleted"], m
    return body["results"]


async def test_search_matches_word_prefixes_newest_first_in_the_callers_conversations(nodes):
    writer, reader = nodes
    a, b, c = await writer.users(3, "se")
    word = unique("zq")  # a word no other test's messages hold
    ab = await writer.direct(a, b.id)
    ac = await writer.direct(a, c.id)
    a_ws = await writer.connect(a)
    sent = []
    for conv, body in (
        (ab, f"Le Café {word} de la Gare"),
        (ac, f"café {word} for c only"),
        (ab, f"CAFÉTÉRIA {word.upper()} fermée"),
        (ab, f"nothing {word}"),
    ):
        key = await a_ws.send_msg(conv["id"], body)
        sent.append(await a_ws.expect_message(conv["id"], lambda m, key=key: m["client_msg_id"] == key))

    async def found():
        got = await search(reader, b, q=f"cafe {word}")
        assert [m["body"] for m in got] == [sent[2]["body"], sent[0]["body"]], got

    await eventually(found)
    assert [m["message_id"] for m in await search(reader, b, q=f"caf {word[:5]} gar")] == [sent[0]["message_id"]]
    assert await search(reader, b, q=f"{word} zebra") == [], "every word"
    assert len(await search(reader, a, q=f"cafe {word}")) == 3
    assert [m["body"] for m in await search(reader, a, q=word, conversation_id=ac["id"])] == [sent[1]["body"]]
    assert len(await search(reader, a, q=word, limit=1)) == 1

    edit = {"type": "edit", "client_msg_id": cmid(), "conversation_id": ab["id"], "message_id": sent[3]["message_id"], "body": f"something {word} now"}
    await a_ws.send(edit)
    await a_ws.expect_accepted(edit["client_msg_id"])
    delete = {"type": "delete", "client_msg_id": cmid(), "conversation_id": ab["id"], "message_id": sent[0]["message_id"]}
    await a_ws.send(delete)
    await a_ws.expect_accepted(delete["client_msg_id"])

    async def current():
        got = await search(reader, b, q=f"{word} somethi")
        assert [(m["message_id"], m["body"]) for m in got] == [(sent[3]["message_id"], f"something {word} now")], got
        assert await search(reader, b, q=f"nothing {word}") == [], "the old body"
        assert [m["message_id"] for m in await search(reader, b, q=f"cafe {word}")] == [sent[2]["message_id"]], "deleted"

    await eventually(current)


async def test_a_bad_search_is_refused(nodes):
    writer, _ = nodes
    a, b, c = await writer.users(3, "sb")
    bc = await writer.direct(b, c.id)
    for params in ({"q": ""}, {"q": "   "}, {"q": "x" * 257}, {"q": "x", "limit": 0}, {"q": "x", "limit": 101}, {}):
        assert_error(await writer.get("/search", a.token, params=params), 400, "bad_request")
    assert_error(await writer.get("/search", a.token, params={"q": "x", "conversation_id": bc["id"]}), 403, "forbidden")
    assert_error(await writer.get("/search", a.token, params={"q": "x", "conversation_id": str(uuid.uuid4())}), 404, "not_found")
    assert_error(await writer.get("/search", None, params={"q": "x"}), 401, "unauthorized")
    assert await search(writer, a, q="!!! ???") == [], "no words: nothing matches"
