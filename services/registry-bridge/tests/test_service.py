"""The running service in embedded mode: the reconcile loop is its only registry source, plus
the ModelVersionRegistered fast path; operators' endpoints answer."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client import REGISTRY

from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.events import ModelPromoted, ModelVersionRegistered

from .conftest import make_service


def seen(source: str) -> float:
    return REGISTRY.get_sample_value("eostream_bridge_versions_seen_total", {"source": source}) or 0


async def wait_for_promotions(bus: InMemoryBus, count: int, timeout: float = 120) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        events = [decode(m) for m in bus._logs[topics.MODELS_PROMOTED]]
        if len(events) >= count:
            return events
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} ModelPromoted after {timeout}s")


async def test_reconcile_loop_and_event_fast_path(
    bridge_settings: BridgeSettings, register: Any, models: Any
) -> None:
    settings = bridge_settings.model_copy(update={"reconcile_interval_seconds": 3600})
    bus = InMemoryBus(service="registry-bridge")
    v1 = register(models.better)  # registered while no bridge runs: no webhook, no event
    service = make_service(settings, bus)
    before_reconcile, before_event = seen("reconcile"), seen("event")
    await service.start()
    try:
        [first] = await wait_for_promotions(bus, 1)
        assert isinstance(first, ModelPromoted) and first.version == v1
        assert seen("reconcile") > before_reconcile

        v2 = register(models.better)
        await bus.publish(
            topics.MODELS_REGISTERED,
            ModelVersionRegistered(
                name="eurosat-landcover", version=v2, run_id="r", band_set="rgb"
            ),
        )
        events = await wait_for_promotions(bus, 2)
        assert events[1].version == v2 and events[1].previous_version == v1
        assert seen("event") > before_event

        async with httpx.AsyncClient(base_url=service.server.url) as http:
            assert (await http.get("/livez")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            text = (await http.get("/metrics")).text
            assert 'eostream_bridge_gate_results_total{outcome="passed"}' in text
            assert "eostream_bridge_ship_duration_seconds_bucket" in text
    finally:
        await service.stop()
