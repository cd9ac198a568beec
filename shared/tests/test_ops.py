"""The operators' endpoints every service exposes."""

from __future__ import annotations

import importlib.metadata
import platform

import httpx

from eostream.shared import metrics
from eostream.shared.ops import OpsServer, create_ops_app


async def test_liveness_readiness_and_metrics_over_http() -> None:
    state = {"ready": False}
    app = create_ops_app("demo", lambda: (state["ready"], "waiting for Kafka"))
    server = OpsServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        metrics.PUBLISHED.labels("demo", "eostream.test").inc()
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/livez")).status_code == 200
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["detail"] == "waiting for Kafka"
            state["ready"] = True
            assert (await client.get("/readyz")).status_code == 200
            scraped = (await client.get("/metrics")).text
        assert 'eostream_events_published_total{service="demo",topic="eostream.test"}' in scraped
        assert 'eostream_service_up{service="demo"} 1.0' in scraped
        version = importlib.metadata.version("eostream-shared")
        assert (
            f'eostream_build_info{{python="{platform.python_version()}",version="{version}"}} 1.0'
            in scraped
        )
    finally:
        await server.stop()
