"""Harness: the server under test, and a per-test API client.

With CHORUS_URL set (e.g. http://127.0.0.1:8080) the tests use that server (start it
with the sign-up and sign-in limits lifted and a small attachment quota, as
SERVER_SETTINGS below); a
comma-separated list names the nodes of one cluster (HTTP goes to the first, WebSocket
sessions alternate between them). Otherwise
they start CHORUS_BIN (default <repo>/target/debug/chorus) as
`chorus serve --listen 127.0.0.1:PORT --data-dir TMPDIR` on a free port, wait for
/healthz, and stop it when the session ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from chorus_helpers import Api

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("CHORUS_START_TIMEOUT", "60"))
# Per-address limits on sign-ups and sign-ins are made for people: a suite that signs
# up hundreds of users from one address lifts them on the server it starts. A server
# given with CHORUS_URL needs the same settings.
UNTHROTTLED = {
    "CHORUS_REGISTRATIONS_PER_HOUR": "1000000",
    "CHORUS_LOGIN_FAILURES_PER_ADDRESS": "1000000",
}
# The quota of stored attachments per user on the server under test: small enough that
# a test fills it in a few uploads (test_attachments.py). A server given with
# CHORUS_URL needs the same setting.
ATTACHMENT_QUOTA_BYTES = 40 * 1024 * 1024
SERVER_SETTINGS = {**UNTHROTTLED, "CHORUS_ATTACHMENT_QUOTA_BYTES": str(ATTACHMENT_QUOTA_BYTES)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def server_url(tmp_path_factory) -> str:
    url = os.environ.get("CHORUS_URL")
    if url:
        yield url.rstrip("/")
        return

    binary = Path(os.environ.get("CHORUS_BIN", REPO / "target" / "debug" / "chorus"))
    if not binary.is_file():
        pytest.fail(f"server binary {binary} not found: build it, or set CHORUS_BIN or CHORUS_URL")

    workdir = tmp_path_factory.mktemp("chorus-server")
    data_dir = workdir / "data"
    data_dir.mkdir()
    log_path = workdir / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # The suite signs up hundreds of users from this one address.
            env={**os.environ, **SERVER_SETTINGS},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"server exited with {proc.returncode} before answering /healthz; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            try:
                if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"server did not answer /healthz within {START_TIMEOUT}s; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest_asyncio.fixture
async def api(server_url):
    client = Api(server_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def nodes(server_url):
    """(writer, reader): clients of the first and the last node named by CHORUS_URL
    (the same server when it names one), for tests that act through one node and
    check through the other."""
    urls = [u.strip() for u in server_url.split(",") if u.strip()]
    writer, reader = Api(urls[0]), Api(urls[-1])
    try:
        yield writer, reader
    finally:
        await writer.aclose()
        await reader.aclose()
