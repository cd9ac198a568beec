"""Reading back what the watcher published on the in-process bus (through a real consumer)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from eostream.shared.bus import Delivery
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import Event, SceneDiscovered


async def drain(bus: InMemoryBus, topic: str, group: str) -> list[SceneDiscovered]:
    """Every event on ``topic`` that ``group`` has not consumed yet."""
    got: list[SceneDiscovered] = []
    want = bus.size(topic)

    async def handler(event: Event, delivery: Delivery) -> None:
        assert isinstance(event, SceneDiscovered)
        got.append(event)

    consumer = bus.consumer([topic], group, handler)
    task = asyncio.create_task(consumer.run())
    for _ in range(500):
        await asyncio.sleep(0.01)
        if bus._committed[(group, topic)] >= want:
            break
    await consumer.stop()
    await task
    return got


def write_catalogue(root: Path, items: list[dict[str, Any]]) -> Path:
    """A static catalogue, one file per item (rewritten in place: the user fixes it there)."""
    root.mkdir(exist_ok=True)
    links = []
    for item in items:
        (root / f"{item['id']}.json").write_text(json.dumps(item))
        links.append({"rel": "item", "href": f"./{item['id']}.json"})
    catalog = {
        "type": "Catalog",
        "id": "replay",
        "stac_version": "1.0.0",
        "description": "items to fix and replay",
        "links": links,
    }
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root / "catalog.json"


#: one label item (STAC label extension): water polygons over the Boadella reservoir
LABEL_ITEM: dict[str, Any] = {
    "type": "Feature",
    "stac_version": "1.0.0",
    "stac_extensions": ["https://stac-extensions.github.io/label/v1.0.1/schema.json"],
    "id": "boadella-2020-06-21-water",
    "geometry": {
        "type": "Polygon",
        "coordinates": [
            [[2.79, 42.33], [2.83, 42.33], [2.83, 42.36], [2.79, 42.36], [2.79, 42.33]]
        ],
    },
    "bbox": [2.79, 42.33, 2.83, 42.36],
    "properties": {
        "datetime": "2020-06-21T10:56:31Z",
        "label:description": "water",
        "label:type": "vector",
        "label:properties": ["class"],
        "label:classes": [{"name": "class", "classes": ["water", "other"]}],
        "label:tasks": ["segmentation"],
    },
    "assets": {
        "labels": {
            "href": "s3://labels/boadella-2020-06-21-water.geojson",
            "type": "application/geo+json",
            "roles": ["labels"],
        }
    },
    "links": [],
}
