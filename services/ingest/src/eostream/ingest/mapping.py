"""STAC item -> SceneDiscovered: a pure function, and the checks that reject an item.

No I/O here. The watcher calls :func:`to_scene` for every item; :class:`ItemRejected` carries the
reason the item goes to the dead-letter topic with.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from shapely.geometry import shape
from shapely.validation import explain_validity

from eostream.ingest.errors import ItemRejected
from eostream.shared.errors import InvalidItemError
from eostream.shared.events import Level, SceneDiscovered
from eostream.shared.sentinel2 import (
    bands_of,
    check_item,
    processing_baseline,
    processing_level,
)

#: Namespace of the deterministic event ids (uuid5): the same item version always gets the
#: same id, so a duplicate after a crash is recognisable downstream by ``event.id``.
EVENT_NAMESPACE = uuid.UUID("0d6c5f7e-3b1f-5b8e-9a55-6e2f1b0c7a41")

_TILE_IN_ID = re.compile(r"(?:^|_)T?(\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?:_|$)")


def item_id(item: dict[str, Any]) -> str:
    value = item.get("id")
    return value if isinstance(value, str) and value else "<no id>"


def item_version(item: dict[str, Any]) -> str:
    """What changes when the provider updates an item: ``updated``, else a content digest."""
    # never raises, whatever the item's shape: it is computed before the item is checked
    properties = item.get("properties")
    updated = properties.get("updated") if isinstance(properties, dict) else None
    if isinstance(updated, str) and updated:
        return updated
    content = {k: item.get(k) for k in ("geometry", "bbox", "properties")}
    assets = item.get("assets")
    content["assets"] = (
        {str(k): v.get("href") if isinstance(v, dict) else None for k, v in assets.items()}
        if isinstance(assets, dict)
        else assets or {}
    )
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return "sha256:" + digest[:32]


def event_id(source: str, item: str, version: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_NAMESPACE, f"{source}\x00{item}\x00{version}")


def parse_datetime(item: dict[str, Any]) -> datetime:
    properties = item.get("properties") or {}
    raw = properties.get("datetime") or properties.get("start_datetime")
    if not isinstance(raw, str) or not raw:
        raise ItemRejected(item_id(item), "missing datetime (properties.datetime is null/absent)")
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ItemRejected(item_id(item), f"unparseable datetime {raw!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def level_of(item: dict[str, Any], assume: Level | None = None) -> Level:
    """L1C or L2A by :func:`eostream.shared.sentinel2.processing_level`, else ``assume``."""
    level = processing_level(item)
    if level is not None:
        return level
    if assume is not None:
        return assume
    raise ItemRejected(
        item_id(item),
        "unknown processing level: no s2:processing_level, s2:product_type, collection or id "
        "names L1C or L2A (set assume_level on the source if the catalogue is known to be one)",
    )


def tile_of(item: dict[str, Any]) -> str | None:
    """MGRS tile (``29RKH``) from grid:code, mgrs:*, s2:mgrs_tile, sentinel:* or the id."""
    p = item.get("properties") or {}
    code = p.get("grid:code")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return code[5:].upper()
    for prefix in ("mgrs:", "sentinel:"):
        zone, band, square = (
            p.get(prefix + k) for k in ("utm_zone", "latitude_band", "grid_square")
        )
        number = str(zone) if isinstance(zone, int) and not isinstance(zone, bool) else zone
        if (  # each part its own shape, else not a tile (a list or a NaN raised here)
            isinstance(number, str)
            and number.isascii()
            and number.isdigit()
            and 1 <= int(number) <= 60
            and isinstance(band, str)
            and isinstance(square, str)
            and re.fullmatch(r"[A-Za-z]", band)
            and re.fullmatch(r"[A-Za-z]{2}", square)
        ):
            return f"{int(number):02d}{band}{square}".upper()
    tile = p.get("s2:mgrs_tile")
    if isinstance(tile, str) and tile:
        return tile.upper().removeprefix("T")
    match = _TILE_IN_ID.search(item_id(item))
    return match.group(1) if match else None


def cloud_cover_of(item: dict[str, Any]) -> float | None:
    value = (item.get("properties") or {}).get("eo:cloud_cover")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    return None


def check_geometry(item: dict[str, Any]) -> tuple[float, float, float, float]:
    """The item's bbox, after checking its geometry is a valid lon/lat polygon."""
    geometry = item.get("geometry")
    if not isinstance(geometry, dict):
        raise ItemRejected(item_id(item), "bad geometry: missing or null")
    try:
        geom = shape(geometry)
    except Exception as exc:  # shapely raises several types for malformed GeoJSON
        raise ItemRejected(item_id(item), f"bad geometry: {exc}") from None
    if geom.is_empty:
        raise ItemRejected(item_id(item), "bad geometry: empty")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise ItemRejected(item_id(item), f"bad geometry: a {geom.geom_type}, not a polygon")
    if not geom.is_valid:
        raise ItemRejected(item_id(item), f"bad geometry: {explain_validity(geom)}")
    w, s, e, n = geom.bounds
    if not all(map(math.isfinite, (w, s, e, n))) or not (
        -180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90
    ):
        raise ItemRejected(item_id(item), f"bad geometry: bounds {geom.bounds} are not lon/lat")
    bbox = item.get("bbox")
    if bbox is None:
        return (w, s, e, n)
    return check_bbox(item_id(item), bbox)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_bbox(ident: str, bbox: object) -> tuple[float, float, float, float]:
    """An item's declared ``bbox`` (4 numbers, or 6 with heights) as (west, south, east, north),
    or ItemRejected: a string, a null or a NaN in it raised from the poll, or went on the bus."""
    shown = repr(bbox)[:120]
    if not isinstance(bbox, list | tuple) or len(bbox) not in (4, 6):
        raise ItemRejected(ident, f"bad bbox: {shown} is not a list of 4 or 6 numbers")
    if not all(_finite(v) for v in bbox):
        raise ItemRejected(ident, f"bad bbox: {shown} has a value that is no finite number")
    w, s, e, n = (bbox[0], bbox[1], bbox[2], bbox[3]) if len(bbox) == 4 else (*bbox[:2], *bbox[3:5])
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
        raise ItemRejected(ident, f"bad bbox: {shown} is not lon/lat (west, south, east, north)")
    return (float(w), float(s), float(e), float(n))


def baseline_of(item: dict[str, Any]) -> str | None:
    """The item's processing baseline (:func:`eostream.shared.sentinel2.processing_baseline`)."""
    return processing_baseline(item)


def self_href(item: dict[str, Any]) -> str | None:
    links = item.get("links")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


def to_scene(
    item: dict[str, Any],
    *,
    source: str,
    href: str | None = None,
    assume_level: Level | None = None,
    replace: bool = False,
    supersedes: bool = False,
) -> SceneDiscovered:
    """Map one STAC item (as JSON) to its event, or raise ItemRejected with the reason.
    ``replace``: announced again on request (a backfill), under a fresh event id; ``supersedes``:
    a new version of an item announced before, under its version's own id; both ask inference
    to map the scene again rather than skip it as mapped."""
    ident = item.get("id")
    if not isinstance(ident, str) or not ident or len(ident) > 256:
        raise ItemRejected(item_id(item), "missing or invalid id")
    try:  # a field of the wrong type (roles not a list, a scale that is no number)
        check_item(item)
    except InvalidItemError as exc:
        raise ItemRejected(ident, str(exc)) from None
    when = parse_datetime(item)
    bbox = check_geometry(item)
    if not item.get("assets"):
        raise ItemRejected(ident, "missing assets: the item has none")
    bands = bands_of(item)
    if not bands:
        raise ItemRejected(ident, "missing assets: no Sentinel-2 band asset (B01..B12, B8A)")
    level = level_of(item, assume_level)
    item_href = href or self_href(item)
    if not item_href:
        raise ItemRejected(ident, "no href: the item has no self link")
    version = item_version(item)
    return SceneDiscovered(
        id=uuid.uuid4() if replace else event_id(source, ident, version),
        item_id=ident,
        item_href=item_href,
        collection=item.get("collection") if isinstance(item.get("collection"), str) else None,
        datetime=when,
        tile=tile_of(item),
        cloud_cover=cloud_cover_of(item),
        processing_level=level,
        processing_baseline=baseline_of(item),
        bands=bands,
        bbox=bbox,
        source_name=source,
        source="ingest",
        replace=replace or supersedes,
    )
