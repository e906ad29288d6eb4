"""Health, readiness and metrics endpoints."""

import shutil
import subprocess

import pytest

pytestmark = pytest.mark.asyncio


async def test_healthz(api):
    resp = await api.http.get("/healthz")
    assert resp.status_code == 200, resp.text


async def test_readyz(api):
    resp = await api.http.get("/readyz")
    assert resp.status_code == 200, resp.text


async def test_metrics_prometheus_text(api):
    # Some traffic first, so that counters exist.
    user = await api.new_user("metrics")
    conv = await api.group(user)
    ws = await api.connect(user)
    key = await ws.send_msg(conv["id"], "count me")
    await ws.expect_accepted(key)
    await ws.expect_message(conv["id"])

    resp = await api.http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("content-type", "").startswith("text/plain"), resp.headers
    lines = resp.text.splitlines()
    assert any(line.startswith("chorus_") for line in lines), resp.text[:2000]
    # Every sample line is `name{labels} value`.
    for line in lines:
        if line and not line.startswith("#"):
            name_and_labels, _, value = line.rpartition(" ")
            assert name_and_labels, line
            float(value.split(" ")[0])

    # Prometheus's own linter: help text on every metric, counters end in `_total`,
    # base units in names. scripts/test.sh installs it (Debian's `prometheus`).
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: install Debian's `prometheus` package"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=resp.text, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"
    for name in ("chorus_ws_connections", "chorus_stage_events_total", "chorus_stage_batch_seconds_bucket",
                 "chorus_consumer_lag", "chorus_db_query_seconds_bucket", "chorus_messages_stored_total"):
        assert any(line.startswith(name) for line in lines), f"{name} missing from /metrics"
