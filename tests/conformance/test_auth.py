"""Registration, login, /me, user search, and refused tokens."""

import secrets

import pytest

from chorus_helpers import (
    PASSWORD,
    assert_error,
    assert_status,
    assert_user_shape,
    forged_tokens,
    is_uuid,
    swapped_payload,
    unique,
)

pytestmark = pytest.mark.asyncio


async def test_register_returns_user_and_working_token(api):
    username = unique("reg")
    body = assert_status(await api.register_raw(username, PASSWORD), 201)
    assert_user_shape(body["user"])
    assert body["user"]["username"] == username
    assert isinstance(body["token"], str) and body["token"]

    me = assert_status(await api.get("/me", body["token"]), 200)
    assert me["id"] == body["user"]["id"]
    assert me["username"] == username


async def test_duplicate_username_is_conflict(api):
    user = await api.new_user("dup")
    assert_error(await api.register_raw(user.username, "another password"), 409, "conflict")


async def _register_short_unique(api, length: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789"):
    """Registers a fresh username of exactly `length` characters (retrying on a clash)."""
    for _ in range(10):
        name = "".join(secrets.choice(alphabet) for _ in range(length))
        resp = await api.register_raw(name)
        if resp.status_code != 409:
            return name, resp
    raise AssertionError("no free username found")


async def test_username_length_and_charset_boundaries(api):
    name, resp = await _register_short_unique(api, 3)
    assert_status(resp, 201)
    name, resp = await _register_short_unique(api, 32)
    assert_status(resp, 201)
    # Every allowed punctuation character.
    assert_status(await api.register_raw(f"a.b-c_{secrets.token_hex(4)}"), 201)
    assert_status(await api.register_raw(f"A-Z_{secrets.token_hex(4)}.x"), 201)


@pytest.mark.parametrize(
    "username",
    [
        "ab",  # too short
        "a" * 33,  # too long
        "",
        "has space",
        "slash/name",
        "at@name",
        "ünïcode",
        "emoji😀x",
        "semi;colon",
    ],
)
async def test_bad_username_is_bad_request(api, username):
    assert_error(await api.register_raw(username), 400, "bad_request")


async def test_password_length_boundaries(api):
    assert_error(await api.register_raw(unique("pw"), "x" * 7), 400, "bad_request")
    assert_error(await api.register_raw(unique("pw"), ""), 400, "bad_request")
    assert_error(await api.register_raw(unique("pw"), "x" * 1025), 400, "bad_request")
    assert_status(await api.register_raw(unique("pw"), "x" * 8), 201)
    long_name = unique("pw")
    assert_status(await api.register_raw(long_name, "y" * 1024), 201)
    # The 1024-character password really is the password.
    assert_status(
        await api.post("/auth/login", json={"username": long_name, "password": "y" * 1024}), 200
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"username": "missingpassword"},
        {"password": PASSWORD},
        {},
        {"username": 12345, "password": PASSWORD},
        {"username": "typedpassword", "password": 12345678},
        [],
    ],
)
async def test_register_missing_or_invalid_fields(api, payload):
    assert_error(await api.post("/auth/register", json=payload), 400, "bad_request")


async def test_register_malformed_json(api):
    assert_error(await api.post("/auth/register", content=b'{"username": "x",'), 400, "bad_request")


async def test_login(api):
    user = await api.new_user("login")
    body = assert_status(
        await api.post("/auth/login", json={"username": user.username, "password": user.password}), 200
    )
    assert_user_shape(body["user"])
    assert body["user"]["id"] == user.id
    assert body["user"]["username"] == user.username
    me = assert_status(await api.get("/me", body["token"]), 200)
    assert (me["id"], me["username"]) == (user.id, user.username)


async def test_login_wrong_password_or_unknown_user_is_unauthorized(api):
    user = await api.new_user("login")
    assert_error(
        await api.post("/auth/login", json={"username": user.username, "password": "wrong password"}),
        401,
        "unauthorized",
    )
    assert_error(
        await api.post("/auth/login", json={"username": unique("nobody"), "password": PASSWORD}),
        401,
        "unauthorized",
    )


async def test_login_malformed_is_bad_request(api):
    assert_error(await api.post("/auth/login", json={"username": "only"}), 400, "bad_request")
    assert_error(await api.post("/auth/login", content=b"not json"), 400, "bad_request")


async def test_me_requires_a_valid_token(api):
    a = await api.new_user("me")
    b = await api.new_user("me")
    me = assert_status(await api.get("/me", a.token), 200)
    assert_user_shape(me)
    assert (me["id"], me["username"]) == (a.id, a.username)

    assert_error(await api.get("/me"), 401, "unauthorized")
    assert_error(await api.get("/me", "garbage"), 401, "unauthorized")
    assert_error(await api.get("/me", headers={"Authorization": "Bearer"}), 401, "unauthorized")
    assert_error(
        await api.get("/me", headers={"Authorization": a.token}), 401, "unauthorized"
    )  # no "Bearer" scheme
    assert_error(
        await api.get("/me", headers={"Authorization": f"Basic {a.token}"}), 401, "unauthorized"
    )
    for kind, token in forged_tokens(a.token).items():
        resp = await api.get("/me", token)
        assert resp.status_code == 401, f"{kind} token accepted: {resp.status_code} {resp.text}"
        assert_error(resp, 401, "unauthorized")
    assert_error(await api.get("/me", swapped_payload(a.token, b.token)), 401, "unauthorized")


async def test_user_search_by_prefix(api):
    searcher = await api.new_user("srch")
    prefix = f"p{secrets.token_hex(5)}"
    alice = await api.new_user(prefix + "_alice")
    bob = await api.new_user(prefix + "_bob")
    other = await api.new_user(f"q{secrets.token_hex(5)}")

    body = assert_status(await api.get("/users", searcher.token, params={"query": prefix}), 200)
    assert isinstance(body.get("users"), list), body
    for u in body["users"]:
        assert_user_shape(u)
    found = {(u["id"], u["username"]) for u in body["users"]}
    assert found == {(alice.id, alice.username), (bob.id, bob.username)}

    body = assert_status(await api.get("/users", searcher.token, params={"query": prefix + "_b"}), 200)
    assert [(u["id"], u["username"]) for u in body["users"]] == [(bob.id, bob.username)]

    # A prefix search, not a substring search.
    body = assert_status(await api.get("/users", searcher.token, params={"query": alice.username[1:]}), 200)
    assert alice.id not in {u["id"] for u in body["users"]}

    body = assert_status(await api.get("/users", searcher.token, params={"query": other.username}), 200)
    assert [u["id"] for u in body["users"]] == [other.id]


async def test_user_search_requires_auth(api):
    assert_error(await api.get("/users", params={"query": "a"}), 401, "unauthorized")
    assert_error(await api.get("/users", "garbage", params={"query": "a"}), 401, "unauthorized")


async def test_ids_are_uuids(api):
    user = await api.new_user("ids")
    assert is_uuid(user.id)
