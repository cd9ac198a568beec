"""Does a new result concern a subscriber? Pure: a result (its footprint and class shares)
against a subscription (its area, classes and minimum share)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from eostream.inference.geojson import bbox_shape
from eostream.inference.subscriptions.store import Subscription


def footprint(
    item: Mapping[str, Any], bbox: tuple[float, float, float, float] | None
) -> BaseGeometry | None:
    """The result's footprint: its item's geometry, else its bounding box (:func:`bbox_shape`),
    else None."""
    geometry = item.get("geometry")
    if isinstance(geometry, Mapping):
        try:
            found = shape(geometry)
        except (ValueError, TypeError, KeyError, AttributeError):
            found = None
        if found is not None and not found.is_empty:
            return found if found.is_valid else found.buffer(0)
    if bbox is not None:
        return bbox_shape(bbox)  # two sides when it crosses the antimeridian
    return None


def matched_classes(
    sub: Subscription, area: BaseGeometry, where: BaseGeometry, shares: Mapping[str, float]
) -> tuple[str, ...] | None:
    """The subscription's classes the result has (at or above its minimum share; without one,
    present at all), or None when it does not concern the subscriber: its footprint ``where``
    misses the subscription's ``area``, or none of the classes asked for is there. A
    subscription without classes wants every result in its area (an empty tuple)."""
    if not area.intersects(where):
        return None
    if not sub.classes:
        return ()
    found = tuple(
        name
        for name in sub.classes
        if (share := shares.get(name)) is not None
        and (share >= sub.min_share if sub.min_share is not None else share > 0)
    )
    return found or None
