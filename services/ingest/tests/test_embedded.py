"""The embedded component: the watcher on the shared in-process bus, state under the home."""

from __future__ import annotations

import asyncio
from pathlib import Path

from eostream.ingest.embedded import DEMO_SCENE, component
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.embedded import EmbeddedContext, EmbeddedSystem
from eostream.shared.storage.local import LocalObjectStore

from .helpers import drain


async def test_embedded_component_announces_the_demo_scene_once(
    tmp_path: Path, data_dir: Path
) -> None:
    bus = InMemoryBus(service="embedded")
    context = EmbeddedContext(
        bus=bus,
        store=LocalObjectStore(tmp_path / "objects", "eostream"),
        home=tmp_path / "home",
        mlflow_tracking_uri="sqlite:///unused.db",
        data_dir=data_dir,
        options={"ingest": {"poll_interval_seconds": 0.1}},
    )
    for _ in range(2):  # a restart on the same home announces nothing again
        async with EmbeddedSystem(context, {"ingest": component}):
            for _ in range(100):
                await asyncio.sleep(0.05)
                if bus.size(topics.SCENES_DISCOVERED):
                    break
            await asyncio.sleep(0.3)  # a few more polls
    events = await drain(bus, topics.SCENES_DISCOVERED, "t")
    assert [e.item_id for e in events] == ["S2A_29RKH_20200219_0_L2A"]
    assert events[0].item_href == str(data_dir / DEMO_SCENE)
