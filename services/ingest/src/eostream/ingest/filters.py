"""Does a scene pass a source's filter? A pure decision, checked after the API's own filtering
(static catalogues cannot filter at all, and not every API supports every filter)."""

from __future__ import annotations

from typing import Any

from shapely.geometry import box, shape

from eostream.ingest.settings import ItemFilter
from eostream.shared.events import SceneDiscovered


def filtered_out(scene: SceneDiscovered, item: dict[str, Any], rule: ItemFilter) -> str | None:
    """None when the scene passes, else why it does not (logged; not an error)."""
    if rule.collections and scene.collection not in rule.collections:
        return f"collection {scene.collection!r} not in {list(rule.collections)}"
    if rule.levels and scene.processing_level not in rule.levels:
        return f"level {scene.processing_level} not in {list(rule.levels)}"
    if rule.max_cloud_cover is not None and scene.cloud_cover is not None:
        if scene.cloud_cover > rule.max_cloud_cover:
            return f"cloud cover {scene.cloud_cover:.1f} > {rule.max_cloud_cover}"
    if rule.start is not None and scene.datetime < rule.start:
        return f"datetime {scene.datetime.isoformat()} before {rule.start.isoformat()}"
    if rule.end is not None and scene.datetime > rule.end:
        return f"datetime {scene.datetime.isoformat()} after {rule.end.isoformat()}"
    area = box(*rule.bbox) if rule.bbox is not None else shape(rule.aoi) if rule.aoi else None
    if area is not None:
        footprint = shape(item["geometry"])
        if not footprint.intersects(area):
            return "footprint outside the area of interest"
    return None
