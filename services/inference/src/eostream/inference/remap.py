"""The maps follow the live model: when a version of a model goes live, the scenes that its other
versions mapped are mapped again with it (``INFERENCE_REMAP_ON_PROMOTION``: by default only for
models trained on the user's own labels, whose card names a chip dataset).

Worked out from the results index: every scene with a result of another version of the live
model's name and none of the live version is announced again as a ``SceneDiscovered`` on the
scenes topic, built from its STAC item as ingest builds one. Through the bus rather than in this
handler, so the scenes consumers share the work and it survives a restart. The event id derives
from the scene, the model and the version: two replicas (each hears every promotion) or a
redelivered promotion announce the same events, and the scenes consumer skips a scene that
version has mapped already. A model trained on a label collection thus re-maps the labelled
area's scenes as soon as a better version is promoted.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from eostream.inference.pipeline import Pipeline
from eostream.inference.results import ResultQuery, ResultRecord, ResultsStore
from eostream.shared.events import SceneDiscovered
from eostream.shared.sentinel2 import bands_of, processing_baseline, processing_level

log = logging.getLogger(__name__)

#: ``SceneDiscovered.source_name`` of a re-announced scene
SOURCE = "inference.remap"
#: namespace of the remap events' ids (uuid5 of "model:version:scene")
_IDS = uuid.UUID("6f1c0a52-8a53-4d8e-9d0c-2d1b7c3e5a90")
PAGE = 500


def stale_results(results: ResultsStore, name: str, version: str) -> list[ResultRecord]:
    """One result per scene that another version of ``name`` mapped and ``version`` did not."""
    by_scene: dict[str, ResultRecord] = {}
    offset = 0
    while True:
        rows, total = results.search(ResultQuery(model_name=name, limit=PAGE, offset=offset))
        for row in rows:
            if row.model_version != version:
                by_scene.setdefault(row.scene_id, row)
        offset += len(rows)
        if not rows or offset >= total:
            break
    return [r for s, r in sorted(by_scene.items()) if not results.exists(s, name, version)]


def scene_href(record: ResultRecord) -> str | None:
    """The scene item a result was made from (its ``derived_from`` link to the source scene)."""
    for link in record.item.get("links") or []:
        if link.get("rel") == "derived_from" and link.get("title") == "source scene":
            return str(link["href"])
    return None


def event_for(
    record: ResultRecord, item: dict[str, Any], href: str, name: str, version: str
) -> SceneDiscovered:
    """The ``SceneDiscovered`` that maps ``record``'s scene again with ``name`` v``version``."""
    level = processing_level(item) or record.item.get("properties", {}).get(
        "eostream:scene_processing_level"
    )
    if level not in ("L1C", "L2A"):
        raise ValueError(f"scene {record.scene_id}: its processing level is unknown")
    when = record.datetime or datetime.fromisoformat(
        str(item["properties"]["datetime"]).replace("Z", "+00:00")
    )
    bands = bands_of(item)
    if not bands:
        raise ValueError(f"scene {record.scene_id}: its item names no Sentinel-2 band")
    collection = item.get("collection")
    return SceneDiscovered(
        id=uuid.uuid5(_IDS, f"{name}:{version}:{record.scene_id}"),
        item_id=record.scene_id,
        item_href=href,
        collection=collection if isinstance(collection, str) else None,
        datetime=when,
        processing_level=level,
        processing_baseline=processing_baseline(item),
        bands=bands,
        bbox=record.bbox,
        source_name=SOURCE,
        source="inference",
    )


def remap_events(pipeline: Pipeline, name: str, version: str) -> list[SceneDiscovered]:
    """The scenes to map again now that ``name`` v``version`` is live (blocking: reads the
    results index and each scene's item). A scene whose item cannot be read or mapped any more
    is left out, with a warning: its older map stays."""
    events = []
    for record in stale_results(pipeline.results, name, version):
        href = scene_href(record)
        try:
            if href is None:
                raise ValueError("its result names no source scene")
            events.append(event_for(record, pipeline.load_item(href), href, name, version))
        except Exception as exc:  # one unreadable scene must not stop the others
            log.warning("not re-mapping %s with %s v%s: %s", record.scene_id, name, version, exc)
    return events
