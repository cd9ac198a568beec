"""Answering an item search over the results index (the STAC API's ``/search`` and items).

The index answers bbox, datetime and ids itself, sorted by id or datetime. With ``intersects``, a
CQL2 filter or a ``sortby`` on another property, its candidates are filtered, sorted and paged
here, at most ``max_candidates`` of them (``INFERENCE_STAC_MAX_CANDIDATES``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import shapely

from eostream.inference.api.filters import Filter
from eostream.inference.api.search_params import footprint
from eostream.inference.errors import TooLargeError
from eostream.inference.results import SORTABLE, ResultQuery, ResultRecord

#: candidates a search loads at most (a setting: ``INFERENCE_STAC_MAX_CANDIDATES``)
MAX_CANDIDATES = 10_000


def index_bbox(area: shapely.Geometry) -> tuple[float, float, float, float]:
    """The box the index narrows an ``intersects`` search to: the area's bounds, or, for an
    area split at the antimeridian as RFC 7946 asks (parts that end at 180 and parts that start
    at -180), the box across it (west > east, which :func:`..results.bbox_overlaps` reads), not
    the -180..180 band of its bounds that would load every result of those latitudes."""
    west, south, east, north = (float(v) for v in area.bounds)
    parts = list(getattr(area, "geoms", [area]))
    at_east = [g for g in parts if g.bounds[2] >= 180.0]
    at_west = [g for g in parts if g.bounds[0] <= -180.0]
    if not at_east or not at_west or len(at_east) + len(at_west) != len(parts):
        return west, south, east, north
    if any(g.bounds[0] <= -180.0 and g.bounds[2] >= 180.0 for g in parts):
        return west, south, east, north  # a part spans the globe
    return min(g.bounds[0] for g in at_east), south, max(g.bounds[2] for g in at_west), north


def search_records(
    results: Any,
    query: ResultQuery,
    area: shapely.Geometry | None,
    sortby: list[tuple[str, bool]] | None = None,
    where: Filter | None = None,
    serve: Callable[[ResultRecord], dict[str, Any]] | None = None,
    *,
    max_candidates: int = MAX_CANDIDATES,
) -> tuple[list[ResultRecord], int]:
    """A page of the index's answer. The index sorts by ``id`` and ``datetime`` itself. With
    ``intersects``, a CQL2 ``filter`` or ``sortby`` another field, the candidates of the index's
    query (bbox, datetime, ids: indexed) are kept where their geometry meets the area and the
    filter selects the item as served, sorted and paged here: at most ``max_candidates`` of them
    are loaded, more is a :class:`TooLargeError`."""
    if area is None and where is None and all(name in SORTABLE for name, _ in sortby or []):
        order = tuple((SORTABLE[name], descending) for name, descending in sortby or [])
        found: tuple[list[ResultRecord], int] = results.search(
            dataclasses.replace(query, order=order)
        )
        return found
    wide = ResultQuery(
        ids=query.ids,
        bbox=index_bbox(area) if area is not None else query.bbox,  # across the antimeridian
        start=query.start,
        end=query.end,
        limit=max_candidates,
    )
    candidates, matched = results.search(wide)
    if matched > max_candidates:
        given = {
            "intersects": area is not None,
            "sortby": bool(sortby),
            "filter": where is not None,
        }
        asked = ", ".join(name for name, yes in given.items() if yes)
        raise TooLargeError(
            f"{matched:,} results match the bbox, datetime and ids; a search with {asked} "
            f"checks at most {max_candidates:,} of them: narrow the bbox (or intersects), the "
            "datetime range or the ids"
        )
    hits = [r for r in candidates if area is None or area.intersects(footprint(r))]
    if where is not None:
        hits = [r for r in hits if where.matches(serve(r) if serve else r.item)]
    # sorted on the items as served: their class shares (eostream:share:*) exist only there
    items = {r.id: serve(r) if serve else r.item for r in hits} if sortby else {}
    for name, descending in reversed(sortby or []):  # stable sorts, last key first
        values = {r.id: sort_value(r.id, items[r.id], name) for r in hits}
        present = [r for r in hits if values[r.id] is not None]
        missing = [r for r in hits if values[r.id] is None]
        present.sort(key=lambda r: sort_key(values[r.id]), reverse=descending)
        hits = present + missing  # items without the property come last either way
    return hits[query.offset : query.offset + query.limit], len(hits)


def sort_value(item_id: str, item: dict[str, Any], name: str) -> Any:
    """An item's property for ``sortby``: ``id``, ``collection`` or a property, with or
    without the ``properties.`` prefix; scalars only."""
    if name == "id":
        return item_id
    if name == "collection":
        return item.get("collection")
    key = name.removeprefix("properties.")
    value = item.get("properties", {}).get(key)
    return value if isinstance(value, str | int | float) else None


def sort_key(value: str | int | float) -> tuple[int, int | float, str]:
    """A sort key that orders numbers among numbers (exactly: ints are not made floats) and text
    among text, numbers before text in ascending order (after it in descending): the same
    property may be a number in one item and text in another, and Python will not compare
    the two. Text of digits only (a model version) is its number."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return (0, int(value), "")  # a model version: "10" after "9"
    if isinstance(value, str):
        return (1, 0, value)
    return (0, value, "")
