"""What a subscription request may say, checked before anything is stored. Pure: the geometry
(GeoJSON, longitude/latitude, valid), the classes (known ones), the minimum share and the
Kafka topic; the webhook URL's policy and reachability are :mod:`.webhooks`'."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from eostream.inference.errors import BadInputError

GEOMETRY_TYPES = frozenset(
    ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
)
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def parse_geometry(value: object, max_vertices: int) -> BaseGeometry:
    """A GeoJSON geometry in longitude/latitude (RFC 7946), valid and of at most
    ``max_vertices`` positions, as a shapely geometry; BadInputError says what is wrong."""
    if not isinstance(value, Mapping):
        raise BadInputError("geometry must be a GeoJSON geometry object")
    kind = value.get("type")
    if kind not in GEOMETRY_TYPES:
        raise BadInputError(
            f"geometry type must be one of {sorted(GEOMETRY_TYPES)} (got {str(kind)[:40]!r})"
        )
    coordinates = value.get("coordinates")
    if not isinstance(coordinates, list) or not coordinates:
        raise BadInputError("geometry coordinates must be a non-empty array")
    positions = _positions(coordinates, max_vertices)
    for lon, lat in positions:
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise BadInputError(
                f"geometry position ({lon}, {lat}) is outside longitude [-180, 180] / "
                "latitude [-90, 90]"
            )
    try:
        geometry = shape({"type": kind, "coordinates": coordinates})
    except (ValueError, TypeError, IndexError, AttributeError, shapely.errors.ShapelyError) as exc:
        raise BadInputError(f"geometry is not valid GeoJSON: {exc}") from None
    if geometry.is_empty:
        raise BadInputError("geometry is empty")
    if not geometry.is_valid:
        raise BadInputError(f"geometry is not valid: {explain_validity(geometry)}")
    return geometry


def _positions(coordinates: list[Any], max_vertices: int) -> list[tuple[float, float]]:
    """Every position of a coordinates array (any nesting), each two or three finite numbers."""
    found: list[tuple[float, float]] = []
    stack: list[Any] = [coordinates]
    while stack:
        node = stack.pop()
        if not isinstance(node, list) or not node:
            raise BadInputError("geometry coordinates must be nested arrays of positions")
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in node):
            if len(node) not in (2, 3) or not all(math.isfinite(v) for v in node):
                raise BadInputError("a geometry position must be 2 or 3 finite numbers")
            found.append((float(node[0]), float(node[1])))
            if len(found) > max_vertices:
                raise BadInputError(f"geometry has more than {max_vertices} positions")
        else:
            stack.extend(node)
    return found


def check_classes(classes: list[str], known: Collection[str]) -> tuple[str, ...]:
    """The classes asked for, each one the service knows (the live model's, the indexed
    results'), without repeats."""
    wanted = tuple(dict.fromkeys(classes))
    if not wanted:
        return ()
    if not known:
        raise BadInputError("no classes are known yet (no model deployed): subscribe without")
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise BadInputError(f"unknown class(es) {unknown[:10]}; known: {sorted(known)}")
    return wanted


def check_min_share(min_share: float | None, classes: tuple[str, ...]) -> float | None:
    if min_share is None:
        return None
    if not math.isfinite(min_share) or not 0 <= min_share <= 1:
        raise BadInputError(f"min_share must be within [0, 1] (got {min_share})")
    if not classes:
        raise BadInputError("min_share needs classes (the share of which class?)")
    return min_share


def check_topic(topic: str, prefix: str) -> str:
    """A Kafka target: a legal topic name under the subscribers' prefix."""
    if not _TOPIC.fullmatch(topic):
        raise BadInputError(
            "kafka_topic must be 1-249 characters of letters, digits, '.', '_' and '-'"
        )
    if not topic.startswith(prefix) or topic == prefix:
        raise BadInputError(f"kafka_topic must start with {prefix!r} and name something after it")
    return topic
