"""The broker stops exactly while ingest publishes a SceneDiscovered (the publish is held at a gate
until the broker is down): the publish is retried until the broker is back, the item is recorded
as seen only then, and it is announced once; the polls after it find it a duplicate."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from eostream.ingest.service import from_settings, running
from eostream.ingest.settings import IngestSettings, StaticSource
from eostream.shared import topics
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.codec import decode
from eostream.shared.events import SceneDiscovered
from eostream.shared.settings import KafkaSettings

pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.slow, pytest.mark.timeout(600)]


def duplicates(source: str) -> float:
    labels = {"source": source, "outcome": "duplicate"}
    return REGISTRY.get_sample_value("eostream_ingest_items_total", labels) or 0.0


async def test_a_broker_outage_during_the_publish_ends_with_the_scene_announced_once(
    kafka_bootstrap: str, rkh_item_path: Path, tmp_path: Path, outage: Any
) -> None:
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"outage{run}.")
    source = f"rkh-{run}"
    settings = IngestSettings(
        bus="kafka",
        kafka=kafka,
        sources=(StaticSource(name=source, href=str(rkh_item_path)),),
        sqlite_path=tmp_path / "state.sqlite",
        poll_interval_seconds=1,
        _env_file=None,
    )
    bus = KafkaBus(kafka, service="ingest")
    await bus.start()
    gated = outage.gate(bus, topics.SCENES_DISCOVERED)
    stop = asyncio.Event()
    try:
        async with running(settings, from_settings(settings, bus=gated)) as watcher:
            task = asyncio.create_task(watcher.run(stop))
            try:
                await outage.during(gated, "ingest")
                before = duplicates(source)
                await outage.wait_for(
                    lambda: duplicates(source) > before, "a poll after the outage"
                )
            finally:
                stop.set()
                await task
        announced = [decode(m) for m in await bus.read_topic(topics.SCENES_DISCOVERED)]
        assert announced and {e.id for e in announced} == {announced[0].id}
        assert isinstance(announced[0], SceneDiscovered)
        assert announced[0].item_id == "S2A_29RKH_20200219_0_L2A"
    finally:
        gated.release.set()
        await bus.close()
