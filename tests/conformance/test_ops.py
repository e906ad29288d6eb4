"""Health, readiness and metrics endpoints."""

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
