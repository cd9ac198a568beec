"""The operators' endpoints every service exposes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
import socket
import threading

import httpx
import pytest

from eostream.shared import metrics
from eostream.shared.errors import ConfigError
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


async def test_a_readiness_check_that_blocks_stops_neither_livez_nor_the_loop() -> None:
    """Inference's readiness pings its results database (up to the pool's 30 s timeout): on the
    event loop that would stop the consumers, the Kafka heartbeats and /livez with it."""
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def readiness() -> tuple[bool, str]:  # a database that does not answer until released
        nonlocal calls
        calls += 1
        entered.set()
        released = release.wait(timeout=5)
        return released, "database answered" if released else "the loop never came back"

    ticks = 0

    async def ticker() -> None:  # stands for the consumers and heartbeats on the same loop
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    server = OpsServer(create_ops_app("demo", readiness), "127.0.0.1", 0)
    await server.start()
    beat = asyncio.create_task(ticker())
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            probes = [asyncio.create_task(client.get("/readyz")) for _ in range(3)]
            assert await asyncio.to_thread(entered.wait, 10)
            before = ticks
            live = await client.get("/livez")  # answered while the check still blocks
            await asyncio.sleep(0.1)
            assert live.status_code == 200
            assert ticks > before
            assert not any(p.done() for p in probes)
            release.set()
            answers = await asyncio.gather(*probes)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert {a.json()["detail"] for a in answers} == {"database answered"}
        assert calls == 1  # probes that came meanwhile shared the run in flight
    finally:
        release.set()
        beat.cancel()
        await server.stop()


async def test_a_port_in_use_is_one_configuration_error() -> None:
    """uvicorn answers a port it cannot bind with sys.exit, which left the event loop as a
    traceback (every service's ``run`` and ``serve``): the server binds it itself now."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = OpsServer(create_ops_app("test", lambda: (True, "ok")), "127.0.0.1", port)
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}"):
            await server.start()


async def test_a_host_name_listens_on_each_of_its_addresses() -> None:
    """The server binds its own sockets (above) as asyncio's create_server would: every
    address the host names (``localhost`` may be ``::1`` and ``127.0.0.1``), an empty host on
    every interface."""
    for host in ("localhost", ""):
        server = OpsServer(create_ops_app("test", lambda: (True, "ok")), host, 0)
        await server.start()
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.get(f"http://127.0.0.1:{server.port}/livez")
            assert answer.status_code == 200, host
        finally:
            await server.stop()
