"""Attachments (protocol v1.1 §3): upload, carry in a message, download whole and
ranged, conditional requests, thumbnails, who may read what, and the limits.

Against a cluster (CHORUS_URL naming several nodes), the uploader's HTTP requests and
WebSocket session go to the first node and the reader's to the last, so every file is
written through one node and read back through another: the bytes must be in the
shared object store, not on a node's disk. Against one server both are that server.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import struct
import uuid
import zlib
from urllib.parse import unquote

import httpx
import pytest

from chorus_helpers import (
    Api,
    User,
    assert_error,
    assert_status,
    cmid,
    is_uuid,
)

from conftest import ATTACHMENT_QUOTA_BYTES

pytestmark = pytest.mark.asyncio

MAX_PER_MESSAGE = 10
MAX_NAME_BYTES = 255
# The server's default limits.max_attachment_bytes.
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
THUMBNAIL_SIDE = 320


# ----------------------------------------------------------------------------- files


def png(width: int, height: int) -> bytes:
    """A valid 8-bit RGB PNG with a gradient (so that it does not compress to nothing)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, (x ^ y) & 0xFF)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_size(data: bytes) -> tuple[str, int, int]:
    """(media type, width, height) of a PNG (its IHDR) or a JPEG (its SOF segment)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        assert data[12:16] == b"IHDR", data[:32]
        width, height = struct.unpack(">II", data[16:24])
        return "image/png", width, height
    assert data.startswith(b"\xff\xd8"), f"neither PNG nor JPEG: {data[:16]!r}"
    i = 2
    while i + 4 <= len(data):
        assert data[i] == 0xFF, f"JPEG marker expected at {i}: {data[i:i + 4]!r}"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC), carry the frame's size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return "image/jpeg", width, height
        i += 2 + length
    raise AssertionError("JPEG without a frame header")


def pattern(n: int) -> bytes:
    return bytes((i * 7) % 251 for i in range(n))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def disposition_name(value: str) -> str:
    """The file name a Content-Disposition header gives: `filename*` (RFC 5987) when
    present, else `filename` (RFC 6266)."""
    extended = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;\s]+)", value, re.I)
    if extended:
        return unquote(extended.group(2), encoding=extended.group(1) or "utf-8", errors="strict")
    plain = re.search(r'filename\s*=\s*"((?:[^"\\]|\\.)*)"', value, re.I)
    if plain:
        return re.sub(r"\\(.)", r"\1", plain.group(1))
    plain = re.search(r"filename\s*=\s*([^;\s]+)", value, re.I)
    assert plain, f"no file name in {value!r}"
    return plain.group(1)


# ------------------------------------------------------------------------------ HTTP


async def upload_raw(
    api: Api, user: User | None, name: str | None, data, content_type: str | None = None
) -> httpx.Response:
    """POST /attachments?name=NAME with `data` as the body, exactly: no Content-Type
    unless given (the helpers' `post` would add application/json)."""
    headers = {}
    if user is not None:
        headers["Authorization"] = f"Bearer {user.token}"
    if content_type is not None:
        headers["Content-Type"] = content_type
    params = {} if name is None else {"name": name}
    return await api.http.post("/api/v1/attachments", params=params, content=data, headers=headers)


async def upload(api: Api, user: User, name: str, data: bytes, content_type: str | None = None) -> dict:
    """Uploads; it must be stored. The Attachment, checked against what was sent."""
    att = assert_status(await upload_raw(api, user, name, data, content_type), 201)
    assert_attachment_shape(att)
    assert att["name"] == name, att
    assert att["content_type"] == (content_type or "application/octet-stream"), att
    assert att["size"] == len(data), att
    assert att["sha256"] == sha256(data), att
    return att


def assert_attachment_shape(att) -> None:
    assert isinstance(att, dict), att
    assert set(att) >= {"attachment_id", "name", "content_type", "size", "sha256"}, att
    assert is_uuid(att["attachment_id"]), att
    assert isinstance(att["name"], str) and isinstance(att["content_type"], str), att
    assert isinstance(att["size"], int) and not isinstance(att["size"], bool) and att["size"] >= 0, att
    assert isinstance(att["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", att["sha256"]), att


async def fetch(api: Api, user: User, att_id: str, suffix: str = "", headers: dict | None = None) -> httpx.Response:
    return await api.get(f"/attachments/{att_id}{suffix}", user.token, headers=headers)


async def send_with(ws, conv_id: str, attachments: list, body: str = "") -> str:
    client_msg_id = cmid()
    await ws.send(
        {
            "type": "send",
            "client_msg_id": client_msg_id,
            "conversation_id": conv_id,
            "body": body,
            "attachments": attachments,
        }
    )
    return client_msg_id


# ----------------------------------------------------------------------------- tests


async def test_an_attachment_sent_in_a_message_is_read_back_by_the_other_member(nodes):
    writer, reader = nodes
    a, b = await writer.users(2, "at")
    conv = await writer.direct(a, b.id)
    picture = png(400, 200)
    notes = pattern(100_000)
    # Uploaded in one order, sent in the other: a message keeps the order sent.
    photo = await upload(writer, a, "été 2026 \"final\".png", picture, "image/png")
    data = await upload(writer, a, "notes.bin", notes)

    b_ws = await reader.connect(b)
    a_ws = await writer.connect(a)
    key = await send_with(a_ws, conv["id"], [data["attachment_id"], photo["attachment_id"]])
    message_id = await a_ws.expect_accepted(key)
    got = await b_ws.expect_message(conv["id"], lambda m: m["client_msg_id"] == key)
    assert got["message_id"] == message_id
    assert got["body"] == "", got
    assert got["attachments"] == [data, photo], got
    for att in got["attachments"]:
        assert_attachment_shape(att)
    history = await reader.history(b, conv["id"])
    assert [m["attachments"] for m in history] == [[data, photo]], history

    # Whole, from the other node.
    whole = await fetch(reader, b, data["attachment_id"])
    assert whole.status_code == 200, whole.text[:300]
    assert whole.content == notes
    h = whole.headers
    assert h["content-type"] == "application/octet-stream"
    assert h["content-length"] == str(len(notes))
    assert h["etag"] == f'"{sha256(notes)}"'
    assert h["x-content-type-options"] == "nosniff"
    assert h["content-disposition"].split(";")[0].strip().lower() == "attachment", h["content-disposition"]
    assert disposition_name(h["content-disposition"]) == "notes.bin"

    pic = await fetch(reader, b, photo["attachment_id"])
    assert pic.status_code == 200, pic.text[:300]
    assert pic.content == picture
    assert pic.headers["content-type"] == "image/png"
    assert pic.headers["etag"] == f'"{sha256(picture)}"'
    disposition = pic.headers["content-disposition"]
    assert disposition.split(";")[0].strip().lower() == "attachment", disposition
    assert disposition_name(disposition) == "été 2026 \"final\".png", disposition

    # Ranges: a middle part, the last bytes, and one outside the file.
    size = len(notes)
    part = await fetch(reader, b, data["attachment_id"], headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206, part.text[:300]
    assert part.headers["content-range"] == f"bytes 1000-1999/{size}"
    assert part.headers["content-length"] == "1000"
    assert part.content == notes[1000:2000]
    tail = await fetch(reader, b, data["attachment_id"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206, tail.text[:300]
    assert tail.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"
    assert tail.content == notes[-10:]
    outside = await fetch(reader, b, data["attachment_id"], headers={"Range": f"bytes={size}-"})
    assert outside.status_code == 416, outside.text[:300]
    assert outside.headers["content-range"] == f"bytes */{size}"

    # Conditional: the ETag it was given answers 304 without the bytes; another, 200.
    cached = await fetch(reader, b, data["attachment_id"], headers={"If-None-Match": h["etag"]})
    assert cached.status_code == 304, cached.text[:300]
    assert cached.content == b""
    other = await fetch(reader, b, data["attachment_id"], headers={"If-None-Match": '"not-it"'})
    assert other.status_code == 200
    assert other.content == notes

    # The thumbnail of the picture, made by the reader's node from the stored bytes.
    thumb = await fetch(reader, b, photo["attachment_id"], "/thumbnail")
    assert thumb.status_code == 200, thumb.text[:300]
    kind, width, height = image_size(thumb.content)
    assert thumb.headers["content-type"] == kind, (thumb.headers["content-type"], kind)
    assert 0 < width <= THUMBNAIL_SIDE and 0 < height <= THUMBNAIL_SIDE, (width, height)
    # The uploader gets one through the other node, of the same size.
    again = await fetch(writer, a, photo["attachment_id"], "/thumbnail")
    assert again.status_code == 200, again.text[:300]
    assert image_size(again.content) == (kind, width, height)
    # Not an image: no thumbnail.
    assert_error(await fetch(reader, b, data["attachment_id"], "/thumbnail"), 404, "not_found")


async def test_only_the_uploader_and_members_may_read(nodes):
    writer, reader = nodes
    a, b, c = await writer.users(3, "ar")
    conv = await writer.direct(a, b.id)
    att = await upload(writer, a, "secret.png", png(40, 20), "image/png")
    att_id = att["attachment_id"]

    # Not yet in any message: its uploader reads it (through either node), nobody else.
    for api in (writer, reader):
        resp = await fetch(api, a, att_id)
        assert resp.status_code == 200, resp.text[:300]
        assert resp.content == png(40, 20)
    assert_error(await fetch(reader, b, att_id), 404, "not_found")
    assert_error(await fetch(reader, b, att_id, "/thumbnail"), 404, "not_found")

    b_ws = await reader.connect(b)
    a_ws = await writer.connect(a)
    key = await send_with(a_ws, conv["id"], [att_id], "here")
    await a_ws.expect_accepted(key)
    got = await b_ws.expect_message(conv["id"], lambda m: m["client_msg_id"] == key)
    assert got["attachments"] == [att], got
    assert (await fetch(reader, b, att_id)).status_code == 200
    assert (await fetch(reader, b, att_id, "/thumbnail")).status_code == 200

    # Not a member: as if it did not exist, the file and its thumbnail alike.
    for api in (writer, reader):
        assert_error(await fetch(api, c, att_id), 404, "not_found")
        assert_error(await fetch(api, c, att_id, "/thumbnail"), 404, "not_found")
        assert_error(await fetch(api, c, att_id, headers={"Range": "bytes=0-0"}), 404, "not_found")
    # No such attachment; no token.
    assert_error(await fetch(reader, b, str(uuid.uuid4())), 404, "not_found")
    assert_error(await fetch(reader, b, str(uuid.uuid4()), "/thumbnail"), 404, "not_found")
    assert_error(await reader.get(f"/attachments/{att_id}"), 401, "unauthorized")


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "a\\b", "a\x01b", "tab\there", "line\nbreak", "x" * (MAX_NAME_BYTES + 1), "é" * 128],
    ids=["empty", "slash", "backslash", "control", "tab", "newline", "256 bytes", "256 UTF-8 bytes"],
)
async def test_bad_names_are_refused(nodes, name):
    writer, _ = nodes
    a = await writer.new_user("an")
    assert_error(await upload_raw(writer, a, name, b"x"), 400, "bad_request")


async def test_names_are_counted_in_utf8_bytes_and_kept_whole(nodes):
    writer, reader = nodes
    a = await writer.new_user("ak")
    assert_error(await upload_raw(writer, a, None, b"x"), 400, "bad_request")
    assert_error(await upload_raw(writer, None, "x.txt", b"x"), 401, "unauthorized")
    # 127 two-byte characters and one byte: 255 bytes, the longest name.
    longest = "é" * 127 + "x"
    att = await upload(writer, a, longest, b"long name", "text/plain")
    resp = await fetch(reader, a, att["attachment_id"])
    assert resp.status_code == 200
    assert disposition_name(resp.headers["content-disposition"]) == longest


async def test_sends_with_attachments_that_are_not_the_senders_are_refused(nodes):
    writer, reader = nodes
    a, b = await writer.users(2, "as")
    conv = await writer.direct(a, b.id)
    theirs = await upload(reader, b, "b.txt", b"from b", "text/plain")
    mine = [await upload(writer, a, f"{i}.txt", f"file {i}".encode(), "text/plain") for i in range(11)]
    b_ws = await reader.connect(b)
    a_ws = await writer.connect(a)

    for attachments, code, why in [
        ([theirs["attachment_id"]], "not_found", "another user's upload"),
        ([mine[0]["attachment_id"], theirs["attachment_id"]], "not_found", "one of them another user's"),
        ([str(uuid.uuid4())], "not_found", "an upload that does not exist"),
        ([m["attachment_id"] for m in mine], "bad_request", "eleven attachments"),
        ([], "bad_request", "an empty body without attachments"),
    ]:
        key = await send_with(a_ws, conv["id"], attachments)
        frame = await a_ws.expect(("accepted", "error"), lambda f, k=key: f.get("client_msg_id") == k)
        assert frame["type"] == "error" and frame.get("code") == code, f"{why}: {frame!r}"
    resp = await writer.post(
        f"/conversations/{conv['id']}/messages",
        a.token,
        json={"client_msg_id": cmid(), "body": "", "attachments": [theirs["attachment_id"]]},
    )
    assert_error(resp, 404, "not_found")
    # Refused means not stored: nothing reached the other member, nothing is in history.
    await b_ws.assert_quiet("message")
    assert await reader.history(b, conv["id"]) == []
    # The uploader of `theirs` never sent it: still only theirs to read.
    assert_error(await fetch(writer, a, theirs["attachment_id"]), 404, "not_found")

    # Ten is the most a message carries.
    ten = [m["attachment_id"] for m in mine[:MAX_PER_MESSAGE]]
    key = await send_with(a_ws, conv["id"], ten)
    await a_ws.expect_accepted(key)
    got = await b_ws.expect_message(conv["id"], lambda m: m["client_msg_id"] == key)
    assert [att["attachment_id"] for att in got["attachments"]] == ten


async def test_a_file_over_the_limit_is_too_large(nodes):
    writer, _ = nodes
    a = await writer.new_user("al")
    over = b"\x00" * (MAX_ATTACHMENT_BYTES + 1)

    # Declared with Content-Length, the server may answer before reading the body and
    # close the connection, so that sending the rest fails. httpx's synchronous client
    # then reads the answer (httpcore does so after a failed write); its asyncio client
    # cannot (anyio marks the stream broken), hence a thread.
    def declared() -> httpx.Response:
        with httpx.Client(base_url=writer.base_url, timeout=writer.http.timeout, trust_env=False) as http:
            return http.post(
                "/api/v1/attachments",
                params={"name": "big.bin"},
                content=over,
                headers={"Authorization": f"Bearer {a.token}"},
            )

    assert_error(await asyncio.to_thread(declared), 413, "too_large")

    # Streamed (chunked, no length): refused when the count passes the limit.
    async def chunks():
        step = 1024 * 1024
        for start in range(0, len(over), step):
            yield over[start:start + step]

    assert_error(await upload_raw(writer, a, "big.bin", chunks()), 413, "too_large")


async def test_the_quota_of_stored_bytes_is_per_user_and_refuses_what_would_pass_it(nodes):
    writer, reader = nodes
    a, b = await writer.users(2, "aq")
    third = ATTACHMENT_QUOTA_BYTES // 3 + 1
    assert_status(await upload_raw(writer, a, "1.bin", b"\x01" * third), 201)
    assert_status(await upload_raw(reader, a, "2.bin", b"\x02" * third), 201)
    # A third third does not fit: refused, with a message naming the quota, through
    # either node (the quota is the user's, not a node's).
    over = await upload_raw(reader, a, "3.bin", b"\x03" * third)
    assert_error(over, 413, "too_large")
    assert "quota" in over.json()["error"]["message"], over.text
    # What does fit still does; then not one byte more. Another user has a quota of
    # their own.
    fits = ATTACHMENT_QUOTA_BYTES - 2 * third
    assert_status(await upload_raw(writer, a, "4.bin", b"\x04" * fits), 201)
    assert_error(await upload_raw(writer, a, "5.bin", b"\x05"), 413, "too_large")
    assert_status(await upload_raw(reader, b, "b.bin", b"\x06" * third), 201)
