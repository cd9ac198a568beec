"""GeoJSON geometries from clients (RFC 7946: longitude/latitude), checked once for every route
that takes one (/stac ``intersects``, subscriptions). Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from eostream.inference.errors import BadInputError

#: positions a client's geometry may have unless the route says otherwise
MAX_VERTICES = 10_000

GEOMETRY_TYPES = frozenset(
    ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
)


def parse_geometry(
    value: object,
    max_vertices: int = MAX_VERTICES,
    *,
    name: str = "geometry",
    simple_features: bool = True,
) -> BaseGeometry:
    """A GeoJSON geometry in longitude/latitude (RFC 7946), valid and of at most
    ``max_vertices`` positions, as a shapely geometry; BadInputError says what is wrong
    (naming the parameter ``name``). A GeometryCollection's members are checked each.
    ``simple_features=False``: its structure only (a provider's footprint may touch itself,
    and is still a footprint); an empty GeometryCollection passes."""
    budget = [max_vertices]
    geometry = _geometry(value, budget, max_vertices, name, simple_features)
    if geometry.is_empty and simple_features:
        raise BadInputError(f"{name} is empty")
    return geometry


def bbox_shape(bbox: tuple[float, float, float, float]) -> BaseGeometry:
    """A stored WGS84 bbox (an item's, a result's) as a shape. One whose west is east of its
    east (``[179, -17, -179, -16]``: across the antimeridian, as STAC and GeoJSON write it) is
    the MultiPolygon of its two sides, ``west..180`` and ``-180..east``, not the box between
    them, which is the rest of the globe."""
    west, south, east, north = bbox
    if west <= east:
        return shapely.box(west, south, east, north)
    return shapely.MultiPolygon(
        [shapely.box(west, south, 180.0, north), shapely.box(-180.0, south, east, north)]
    )


def _geometry(
    value: object, budget: list[int], limit: int, name: str, simple_features: bool = True
) -> BaseGeometry:
    if not isinstance(value, Mapping):
        raise BadInputError(f"{name} must be a GeoJSON geometry object")
    kind = value.get("type")
    if kind == "GeometryCollection":
        members = value.get("geometries")
        if not isinstance(members, list | tuple):
            raise BadInputError(f"{name} is not a GeoJSON geometry: no `geometries` array")
        return shapely.GeometryCollection(
            [_geometry(m, budget, limit, name, simple_features) for m in members]
        )
    if kind not in GEOMETRY_TYPES:
        raise BadInputError(
            f"{name} type must be one of {sorted(GEOMETRY_TYPES)} or GeometryCollection "
            f"(got {str(kind)[:40]!r})"
        )
    coordinates = value.get("coordinates")
    if not isinstance(coordinates, list | tuple) or not coordinates:  # tuples: mapping()
        raise BadInputError(
            f"{name} is not a GeoJSON geometry: its coordinates must be a non-empty array"
        )
    positions = _positions(coordinates, budget, limit, name, POSITION_DEPTH[kind])
    for lon, lat in positions:
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise BadInputError(
                f"{name} position ({lon}, {lat}) is outside longitude [-180, 180] / "
                "latitude [-90, 90]"
            )
    try:
        geometry = shape({"type": kind, "coordinates": coordinates})
    except (ValueError, TypeError, IndexError, AttributeError, shapely.errors.ShapelyError) as exc:
        raise BadInputError(f"{name} is not valid GeoJSON: {exc}") from None
    if simple_features and not geometry.is_valid:
        raise BadInputError(f"{name} is not valid: {explain_validity(geometry)}")
    return geometry


#: how deep a geometry type's positions lie in its coordinates (a Point's are the position)
POSITION_DEPTH = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}


def _positions(
    coordinates: list[Any] | tuple[Any, ...], budget: list[int], limit: int, name: str, depth: int
) -> list[tuple[float, float]]:
    """Every position of a coordinates array, each two or three finite numbers, all ``depth``
    arrays deep (a Point of ``[[0, 0]]`` was taken as a point); ``budget[0]`` counts down the
    positions the whole geometry may still have."""
    found: list[tuple[float, float]] = []
    stack: list[tuple[Any, int]] = [(coordinates, 0)]
    while stack:
        node, level = stack.pop()
        if not isinstance(node, list | tuple) or not node:
            raise BadInputError(f"{name} coordinates must be nested arrays of positions")
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in node):
            if len(node) not in (2, 3) or not all(math.isfinite(v) for v in node):
                raise BadInputError(f"a {name} position must be 2 or 3 finite numbers")
            if level != depth:
                raise BadInputError(
                    f"{name} coordinates nest {level} deep where its type puts positions "
                    f"{depth} deep"
                )
            found.append((float(node[0]), float(node[1])))
            budget[0] -= 1
            if budget[0] < 0:
                raise BadInputError(f"{name} has more than {limit} positions")
        else:
            stack.extend((child, level + 1) for child in node)
    return found
