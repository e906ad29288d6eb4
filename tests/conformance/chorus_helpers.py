"""Helpers shared by the conformance tests.

- `Api`: a thin asynchronous HTTP client for the `/api/v1` surface, plus `connect()`
  to open WebSocket sessions.
- `Client`: one WebSocket session. A background task reads every frame into `log`
  (everything, in arrival order) and `pending` (not yet consumed). `expect()` waits for
  the first pending frame of a given type that matches a predicate, leaving unrelated
  frames (presence, typing, ...) in `pending` for later checks.
- Assertion helpers for error bodies, message and conversation shapes.

Nothing here sleeps to synchronise: waits are for an expected frame, bounded by a
timeout. To show that a frame does NOT arrive, `assert_quiet()` first does a ping/pong
round trip (the server has handled everything sent before the ping) and then waits a
short bounded time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable
from urllib.parse import quote

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

# How long to wait for a frame or a response that must come.
TIMEOUT = float(os.environ.get("CHORUS_TEST_TIMEOUT", "10"))
# How long to keep listening, after a ping/pong barrier, for a frame that must NOT come.
QUIET = float(os.environ.get("CHORUS_TEST_QUIET", "0.5"))

PASSWORD = "correct horse battery"
MAX_BODY_BYTES = 16 * 1024

# ----------------------------------------------------------------------------- values


def unique(prefix: str = "u") -> str:
    """A username-safe, unique name (at most 32 characters for short prefixes)."""
    return f"{prefix}_{secrets.token_hex(6)}"


def cmid() -> str:
    """A fresh client_msg_id."""
    return f"c-{uuid.uuid4()}"


def is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_time(value: Any) -> datetime:
    """Parses an RFC 3339 timestamp (any number of fractional digits) into an aware datetime."""
    assert isinstance(value, str), f"timestamp is not a string: {value!r}"
    m = _RFC3339.match(value)
    assert m, f"not an RFC 3339 timestamp: {value!r}"
    date, clock, frac, zone = m.groups()
    frac = (frac or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if zone in ("Z", "z") else zone
    parsed = datetime.fromisoformat(f"{date}T{clock}.{frac}{zone}")
    assert parsed.utcoffset() is not None
    return parsed.astimezone(timezone.utc)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_tokens(token: str) -> dict[str, str]:
    """Tokens that must all be refused: the same claims signed with another key, with
    `alg: none`, and with a payload swapped under the original signature."""
    parts = token.split(".")
    if len(parts) != 3:
        # Not a JWT: the best we can do is damage it.
        return {"tampered": token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")}
    header, payload, _sig = parts
    other_key = secrets.token_bytes(32)
    hs256_header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    resigned = hmac.new(other_key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    resigned_hs = hmac.new(other_key, f"{hs256_header}.{payload}".encode(), hashlib.sha256).digest()
    none_header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return {
        "other_key": f"{header}.{payload}.{b64url(resigned)}",
        "other_key_hs256": f"{hs256_header}.{payload}.{b64url(resigned_hs)}",
        "alg_none": f"{none_header}.{payload}.",
    }


def swapped_payload(token_a: str, token_b: str) -> str:
    """Token A's header and signature around token B's claims."""
    a = token_a.split(".")
    b = token_b.split(".")
    if len(a) != 3 or len(b) != 3:
        return token_a[::-1]
    return f"{a[0]}.{b[1]}.{a[2]}"


# ------------------------------------------------------------------------- assertions


def assert_error_body(body: Any, code: str, context: str = "") -> None:
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), (
        f"{context}: error body must be {{'error': {{code, message}}}}, got {body!r}"
    )
    assert body["error"].get("code") == code, f"{context}: expected code {code!r}, got {body!r}"
    assert isinstance(body["error"].get("message"), str), f"{context}: error without message: {body!r}"


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    """The response is `status` with an error body carrying `code`."""
    context = f"{resp.request.method} {resp.request.url.path}"
    assert resp.status_code == status, (
        f"{context}: expected {status} {code}, got {resp.status_code}: {resp.text[:500]}"
    )
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"{context}: error body is not JSON: {resp.text[:500]!r}") from None
    assert_error_body(body, code, context)


def assert_status(resp: httpx.Response, *statuses: int) -> Any:
    """The response has one of `statuses`; returns its JSON body (None when empty)."""
    assert resp.status_code in statuses, (
        f"{resp.request.method} {resp.request.url.path}: expected {statuses}, "
        f"got {resp.status_code}: {resp.text[:500]}"
    )
    return resp.json() if resp.content else None


def assert_user_shape(user: Any) -> None:
    assert isinstance(user, dict), user
    assert is_uuid(user.get("id")), user
    assert isinstance(user.get("username"), str), user
    leaked = [k for k in user if "pass" in k.lower() or "hash" in k.lower()]
    assert not leaked, f"user object leaks {leaked}: {user!r}"


MESSAGE_FIELDS = (
    "message_id",
    "client_msg_id",
    "conversation_id",
    "seq",
    "sender_id",
    "body",
    "sent_at",
    "origin",
    "attachments",
    "reply_to",
    "mentions",
    "kind",
    "target_id",
    "emoji",
    "remove",
    "deleted",
    "edited_at",
)


def assert_message_shape(m: Any) -> None:
    assert isinstance(m, dict), m
    missing = [f for f in MESSAGE_FIELDS if f not in m]
    assert not missing, f"message lacks {missing}: {m!r}"
    assert is_uuid(m["message_id"]), m
    assert is_uuid(m["conversation_id"]), m
    assert is_uuid(m["sender_id"]), m
    assert isinstance(m["client_msg_id"], str), m
    assert isinstance(m["seq"], int) and not isinstance(m["seq"], bool) and m["seq"] >= 1, m
    assert isinstance(m["body"], str), m
    assert m["origin"] in ("user", "script", "auto_reply"), m
    parse_time(m["sent_at"])
    # Protocol v1.1: the files it carries and what it answers.
    assert isinstance(m["attachments"], list) and len(m["attachments"]) <= 10, m
    assert m["reply_to"] is None or is_uuid(m["reply_to"]), m
    assert isinstance(m["mentions"], list) and all(is_uuid(u) for u in m["mentions"]), m
    # Protocol v1.1 §1: every entry is a message or a change to one.
    assert m["kind"] in ("text", "edit", "delete", "reaction"), m
    if m["kind"] == "text":
        assert m["target_id"] is None and m["emoji"] is None and m["remove"] is False, m
        if m["edited_at"] is not None:
            parse_time(m["edited_at"])
        if m["deleted"]:
            assert m["body"] == "" and m["attachments"] == [], m
    else:
        assert is_uuid(m["target_id"]), m
        assert m["reply_to"] is None and m["attachments"] == [] and m["deleted"] is False, m
        assert m["edited_at"] is None, m
    if m["kind"] in ("delete", "reaction"):
        assert m["body"] == "", m
    if m["kind"] == "reaction":
        assert isinstance(m["emoji"], str) and 1 <= len(m["emoji"].encode()) <= 64, m
        assert isinstance(m["remove"], bool), m
    else:
        assert m["emoji"] is None and m["remove"] is False, m


def assert_same_message(a: dict, b: dict) -> None:
    """Two views (WebSocket, history) of one stored message agree."""
    for field in MESSAGE_FIELDS:
        if field == "sent_at":
            continue
        assert a[field] == b[field], f"{field} differs: {a!r} vs {b!r}"
    delta = abs((parse_time(a["sent_at"]) - parse_time(b["sent_at"])).total_seconds())
    assert delta < 0.001, f"sent_at differs: {a['sent_at']} vs {b['sent_at']}"


CONVERSATION_FIELDS = ("id", "kind", "title", "members", "owner_id", "created_at", "last_seq", "unread")


def assert_conversation_shape(c: Any) -> None:
    assert isinstance(c, dict), c
    missing = [f for f in CONVERSATION_FIELDS if f not in c]
    assert not missing, f"conversation lacks {missing}: {c!r}"
    assert is_uuid(c["id"]), c
    assert c["kind"] in ("direct", "group"), c
    assert isinstance(c["members"], list) and all(is_uuid(m) for m in c["members"]), c
    assert len(set(c["members"])) == len(c["members"]), f"duplicate members: {c!r}"
    assert isinstance(c["last_seq"], int) and c["last_seq"] >= 0, c
    assert isinstance(c["unread"], int) and c["unread"] >= 0, c
    # Protocol v1.1: never more mentions unread than messages unread.
    assert isinstance(c["mentions_unread"], int) and 0 <= c["mentions_unread"] <= c["unread"], c
    parse_time(c["created_at"])
    if c["kind"] == "direct":
        assert c["title"] is None, f"direct conversation with a title: {c!r}"
        assert len(c["members"]) == 2, c
    else:
        assert is_uuid(c["owner_id"]), c
        assert c["owner_id"] in c["members"], c


async def eventually(check: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.05):
    """Re-runs an async `check` until it stops raising AssertionError, within `timeout`.

    Only for server state read over HTTP that has no frame to wait for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------ users


@dataclass
class User:
    id: str
    username: str
    password: str
    token: str


# ------------------------------------------------------------------------------ HTTP


class Api:
    """The HTTP API of a server, plus its WebSocket endpoint.

    `base_url` may name several nodes of one cluster, comma-separated: HTTP requests go
    to the first, and WebSocket sessions take the nodes in turn, so that deliveries
    cross nodes.
    """

    def __init__(self, base_url: str):
        urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
        self.base_url = urls[0]
        self.ws_urls = []
        for url in urls:
            scheme, rest = url.split("://", 1)
            self.ws_urls.append(("wss" if scheme == "https" else "ws") + "://" + rest + "/api/v1/ws")
        self._next_ws = 0
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=TIMEOUT, trust_env=False)
        self.clients: list[Client] = []

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint for the next session (nodes in turn)."""
        url = self.ws_urls[self._next_ws % len(self.ws_urls)]
        self._next_ws += 1
        return url

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()
        await self.http.aclose()

    # --- raw requests under /api/v1

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        params: dict | None = None,
        content: bytes | str | None = None,
        headers: dict | None = None,
    ) -> httpx.Response:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if content is not None:
            hdrs.setdefault("Content-Type", "application/json")
        return await self.http.request(
            method, "/api/v1" + path, json=json, params=params, content=content, headers=hdrs
        )

    async def get(self, path: str, token: str | None = None, **kw) -> httpx.Response:
        return await self.request("GET", path, token=token, **kw)

    async def post(self, path: str, token: str | None = None, **kw) -> httpx.Response:
        return await self.request("POST", path, token=token, **kw)

    async def delete(self, path: str, token: str | None = None, **kw) -> httpx.Response:
        return await self.request("DELETE", path, token=token, **kw)

    async def patch(self, path: str, token: str | None = None, **kw) -> httpx.Response:
        return await self.request("PATCH", path, token=token, **kw)

    # --- users

    async def register_raw(self, username: Any, password: Any = PASSWORD) -> httpx.Response:
        return await self.post("/auth/register", json={"username": username, "password": password})

    async def new_user(self, prefix: str = "u", password: str = PASSWORD) -> User:
        """Registers a user with a fresh unique name."""
        for _ in range(5):
            username = unique(prefix)
            resp = await self.register_raw(username, password)
            if resp.status_code == 409:
                continue
            body = assert_status(resp, 201)
            assert body["user"]["username"] == username, body
            return User(body["user"]["id"], username, password, body["token"])
        raise AssertionError("could not register a unique user")

    async def users(self, n: int, prefix: str = "u") -> list[User]:
        return [await self.new_user(prefix) for _ in range(n)]

    # --- conversations

    async def direct(self, user: User, other_id: str) -> dict:
        resp = await self.post(
            "/conversations", user.token, json={"kind": "direct", "members": [other_id]}
        )
        body = assert_status(resp, 200, 201)
        assert_conversation_shape(body)
        return body

    async def group(self, owner: User, members: Iterable[User | str] = (), title: str | None = None) -> dict:
        ids = [m.id if isinstance(m, User) else m for m in members]
        resp = await self.post(
            "/conversations",
            owner.token,
            json={"kind": "group", "title": title or unique("group"), "members": ids},
        )
        body = assert_status(resp, 201)
        assert_conversation_shape(body)
        return body

    async def conversations(self, user: User) -> list[dict]:
        body = assert_status(await self.get("/conversations", user.token), 200)
        assert isinstance(body.get("conversations"), list), body
        return body["conversations"]

    async def conversation_of(self, user: User, conv_id: str) -> dict | None:
        """The conversation as it appears in the user's GET /conversations list."""
        found = [c for c in await self.conversations(user) if c["id"] == conv_id]
        assert len(found) <= 1, f"conversation listed twice: {found!r}"
        return found[0] if found else None

    # --- messages

    async def send_http(self, user: User, conv_id: str, body: Any, client_msg_id: str | None = None) -> httpx.Response:
        payload = {"client_msg_id": client_msg_id or cmid(), "body": body}
        return await self.post(f"/conversations/{conv_id}/messages", user.token, json=payload)

    async def history(self, user: User, conv_id: str, **params) -> list[dict]:
        resp = await self.get(f"/conversations/{conv_id}/messages", user.token, params=params or None)
        body = assert_status(resp, 200)
        assert isinstance(body.get("messages"), list), body
        for m in body["messages"]:
            assert_message_shape(m)
            assert m["conversation_id"] == conv_id, m
        seqs = [m["seq"] for m in body["messages"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"history not ascending: {seqs}"
        return body["messages"]

    async def full_history(self, user: User, conv_id: str) -> list[dict]:
        """Every message, paging forward with after_seq."""
        out: list[dict] = []
        after = 0
        while True:
            page = await self.history(user, conv_id, after_seq=after, limit=500)
            if not page:
                return out
            assert page[0]["seq"] > after, (after, page[0])
            out.extend(page)
            after = page[-1]["seq"]

    # --- WebSocket

    async def connect(
        self,
        user: User | None = None,
        *,
        token: str | None = None,
        via: str = "header",
        name: str | None = None,
    ) -> "Client":
        """Opens a session and waits for its `ready` frame, which must come first."""
        token = token if token is not None else user.token
        url, headers = self._ws_target(token, via)
        ws = await ws_connect(
            url,
            additional_headers=headers,
            compression=None,
            proxy=None,
            max_size=4 * 1024 * 1024,
            ping_interval=None,
            open_timeout=TIMEOUT,
            close_timeout=2,
        )
        client = Client(ws, name or (user.username if user else "client"))
        self.clients.append(client)
        ready = await client.expect("ready")
        assert client.log[0] is ready, f"first frame is not ready: {client.log[0]!r}"
        assert is_uuid(ready.get("session_id")), ready
        assert_user_shape(ready.get("user"))
        if user is not None:
            assert ready["user"]["id"] == user.id, ready
            assert ready["user"]["username"] == user.username, ready
        client.session_id = ready["session_id"]
        return client

    async def upgrade_status(self, token: str | None, via: str = "header") -> tuple[int, bytes]:
        """Tries an upgrade; returns the HTTP status and body (101 if it was accepted)."""
        url, headers = self._ws_target(token, via)
        try:
            ws = await ws_connect(
                url, additional_headers=headers, compression=None, proxy=None,
                ping_interval=None, open_timeout=TIMEOUT, close_timeout=2,
            )
        except InvalidStatus as err:
            return err.response.status_code, bytes(err.response.body or b"")
        await ws.close()
        return 101, b""

    def _ws_target(self, token: str | None, via: str) -> tuple[str, dict]:
        if token is None:
            return self.ws_url, {}
        if via == "header":
            return self.ws_url, {"Authorization": f"Bearer {token}"}
        if via == "query":
            return f"{self.ws_url}?token={quote(token, safe='')}", {}
        raise ValueError(via)


# -------------------------------------------------------------------------- WebSocket


class FrameTimeout(AssertionError):
    """An expected frame did not come in time."""


def _summary(frames: list[dict], limit: int = 12) -> str:
    shown = [json.dumps(f, default=str)[:200] for f in frames[-limit:]]
    more = f" (+{len(frames) - limit} earlier)" if len(frames) > limit else ""
    return f"{len(frames)} frame(s){more}: " + "; ".join(shown)


class Client:
    """One WebSocket session."""

    def __init__(self, ws, name: str):
        self.ws = ws
        self.name = name
        self.session_id: str | None = None
        self.log: list[dict] = []  # every frame, in arrival order
        self.pending: list[dict] = []  # frames no expect() has consumed yet
        self.closed: str | None = None
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if isinstance(raw, (bytes, bytearray)):
                    frame = {"type": "<binary>", "data": bytes(raw)}
                else:
                    try:
                        frame = json.loads(raw)
                    except ValueError:
                        frame = {"type": "<not json>", "raw": raw}
                    if not isinstance(frame, dict):
                        frame = {"type": "<not an object>", "raw": raw}
                self.log.append(frame)
                self.pending.append(frame)
                self._changed.set()
            self.closed = "closed (close handshake)"
        except ConnectionClosed as err:
            self.closed = f"closed: {err}"
        except Exception as err:  # pragma: no cover - surfaced through expect()
            self.closed = f"reader failed: {err!r}"
        finally:
            if self.closed is None:
                self.closed = "closed"
            self._changed.set()

    # --- sending

    async def send(self, frame: dict | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        try:
            await self.ws.send(frame)
        except ConnectionClosed as err:
            raise AssertionError(
                f"{self.name}: connection {self.closed or err} while sending; "
                f"pending {_summary(self.pending)}"
            ) from None

    async def send_msg(self, conv_id: str, body: str, client_msg_id: str | None = None) -> str:
        """Sends a `send` frame; returns its client_msg_id."""
        client_msg_id = client_msg_id or cmid()
        await self.send(
            {"type": "send", "client_msg_id": client_msg_id, "conversation_id": conv_id, "body": body}
        )
        return client_msg_id

    # --- receiving

    async def expect(
        self,
        types: str | tuple[str, ...],
        pred: Callable[[dict], bool] | None = None,
        timeout: float = TIMEOUT,
    ) -> dict:
        """Waits for, consumes and returns the first pending frame of `types` matching
        `pred`. Other frames stay pending."""
        if isinstance(types, str):
            types = (types,)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, frame in enumerate(self.pending):
                if frame.get("type") in types and (pred is None or pred(frame)):
                    del self.pending[i]
                    return frame
            if self.closed:
                raise AssertionError(
                    f"{self.name}: connection {self.closed} while waiting for {types}; "
                    f"pending {_summary(self.pending)}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise FrameTimeout(
                    f"{self.name}: no {types} frame within {timeout}s; pending {_summary(self.pending)}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def expect_error(self, code: str, client_msg_id: str | None = None, timeout: float = TIMEOUT) -> dict:
        pred = None if client_msg_id is None else (lambda f: f.get("client_msg_id") == client_msg_id)
        frame = await self.expect("error", pred, timeout)
        assert frame.get("code") == code, f"{self.name}: expected error {code}, got {frame!r}"
        assert isinstance(frame.get("message"), str), frame
        return frame

    async def expect_answer(self, client_msg_id: str, timeout: float = TIMEOUT) -> dict:
        """The `accepted` or `error` frame answering `client_msg_id`."""
        return await self.expect(("accepted", "error"), lambda f: f.get("client_msg_id") == client_msg_id, timeout)

    async def expect_accepted(self, client_msg_id: str, timeout: float = TIMEOUT) -> str:
        """Waits for the answer to a `send`; it must be `accepted`. Returns the message_id."""
        frame = await self.expect(
            ("accepted", "error"), lambda f: f.get("client_msg_id") == client_msg_id, timeout
        )
        assert frame["type"] == "accepted", f"{self.name}: send {client_msg_id} refused: {frame!r}"
        assert is_uuid(frame.get("message_id")), frame
        return frame["message_id"]

    async def expect_message(
        self, conv_id: str, pred: Callable[[dict], bool] | None = None, timeout: float = TIMEOUT
    ) -> dict:
        """Waits for a `message` frame of `conv_id` (and `pred` on the message); returns the message."""
        frame = await self.expect(
            "message",
            lambda f: isinstance(f.get("message"), dict)
            and f["message"].get("conversation_id") == conv_id
            and (pred is None or pred(f["message"])),
            timeout,
        )
        assert_message_shape(frame["message"])
        return frame["message"]

    async def collect_messages(self, conv_id: str, count: int, timeout: float = 30.0) -> list[dict]:
        """The next `count` messages of `conv_id`, in arrival order, within `timeout` overall."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out = []
        for _ in range(count):
            remaining = max(0.0, deadline - loop.time())
            try:
                out.append(await self.expect_message(conv_id, timeout=remaining))
            except FrameTimeout as err:
                raise FrameTimeout(f"{self.name}: got {len(out)} of {count} messages: {err}") from None
        return out

    def take(self, types: str | tuple[str, ...], pred: Callable[[dict], bool] | None = None) -> list[dict]:
        """Removes and returns every pending frame of `types` matching `pred` (no waiting)."""
        if isinstance(types, str):
            types = (types,)
        taken = [f for f in self.pending if f.get("type") in types and (pred is None or pred(f))]
        ids = {id(f) for f in taken}
        self.pending = [f for f in self.pending if id(f) not in ids]
        return taken

    async def ping(self, nonce: Any = None, timeout: float = TIMEOUT) -> dict:
        """A ping/pong round trip; a barrier: the server handled what was sent before."""
        nonce = nonce if nonce is not None else f"n-{secrets.token_hex(8)}"
        await self.send({"type": "ping", "nonce": nonce})
        return await self.expect("pong", lambda f: f.get("nonce") == nonce, timeout)

    async def assert_quiet(
        self,
        types: str | tuple[str, ...],
        pred: Callable[[dict], bool] | None = None,
        wait: float = QUIET,
    ) -> None:
        """No frame of `types` matching `pred` is pending or arrives: ping/pong barrier,
        then a short bounded wait."""
        await self.ping()
        try:
            frame = await self.expect(types, pred, timeout=wait)
        except FrameTimeout:
            return
        raise AssertionError(f"{self.name}: unexpected frame {frame!r}")

    async def sync(self, since: dict[str, int], timeout: float = 30.0) -> tuple[list[dict], dict]:
        """Sends `sync`; returns (every frame that came between the `sync` and its
        `synced`, in order; the `synced` frame). The `message` and `error` frames among
        them are consumed from pending."""
        start = len(self.log)
        await self.send({"type": "sync", "since": since})
        synced = await self.expect("synced", timeout=timeout)
        end = next(i for i in range(start, len(self.log)) if self.log[i] is synced)
        before = self.log[start:end]
        ids = {id(f) for f in before if f.get("type") in ("message", "error")}
        self.pending = [f for f in self.pending if id(f) not in ids]
        assert isinstance(synced.get("last_seq"), dict), synced
        return before, synced

    async def close(self) -> None:
        try:
            await self.ws.close()
        except Exception:
            pass
        try:
            await asyncio.wait_for(self._reader, 5)
        except (asyncio.TimeoutError, Exception):
            self._reader.cancel()
