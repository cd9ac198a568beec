"""Is a STAC item fit to classify? Checked before any work is done or any file written. No I/O.

A scene's id names its results (store keys, result item ids, the results index), so it must be a
safe name; its bbox and datetime go into the result item and the index, so they must be what
STAC says they are (and a time must stay a time once converted to UTC); the asset fields the
scene is read with (``roles``, ``eo:bands``, ``raster:bands`` scale and offset) must have their
STAC types (:func:`eostream.shared.sentinel2.check_item`). Both the consumer (a dead letter)
and the REST API (400, ``bad_input``) refuse an item that is not, with the reason, before
classifying it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from eostream.inference.errors import BadInputError
from eostream.inference.geojson import parse_geometry
from eostream.shared import sentinel2
from eostream.shared.errors import InvalidItemError

#: Most positions a scene's footprint may have (Sentinel-2 tiles' have tens to hundreds)
MAX_FOOTPRINT_VERTICES = 100_000
#: Longest scene id accepted (it becomes part of store keys and result ids).
MAX_ID_LENGTH = 256
#: Letters, digits, ``_ . -``; starting with a letter, digit or ``_``. No ``/``, no spaces.
SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def validate_item(item: dict[str, Any], href: str) -> None:
    """Raise :class:`BadInputError` naming the first problem of ``item``; return if it is fine."""
    check_id(item.get("id"), href)
    check_bbox(item.get("bbox"), href)
    check_geometry(item.get("geometry"), href)
    properties = item.get("properties")
    if not isinstance(properties, dict):
        raise BadInputError(f"{href}: the item has no properties object")
    check_datetime(properties, href)
    check_fields(item, href)


def check_fields(item: dict[str, Any], href: str) -> None:
    """The fields the scene is read with have their STAC types (no crash half-way)."""
    try:
        sentinel2.check_item(item)
    except InvalidItemError as exc:
        raise BadInputError(f"{href}: {exc}") from None


def check_id(value: object, href: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadInputError(f"{href}: the item's id must be a non-empty string")
    shown = value if len(value) <= 80 else value[:80] + "..."
    if len(value) > MAX_ID_LENGTH:
        raise BadInputError(
            f"{href}: the item's id is {len(value)} characters long; at most {MAX_ID_LENGTH}"
        )
    if ".." in value or not SAFE_ID.fullmatch(value):
        raise BadInputError(
            f"{href}: the item's id {shown!r} is not a safe name: use letters, digits and _ . - "
            "(no '/', no '..', no spaces)"
        )
    return value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_geometry(value: object, href: str) -> None:
    """A STAC item's geometry: null, or a GeoJSON geometry of finite longitudes and latitudes
    (its structure; not simple-features validity, which real footprints do not always have).
    It becomes the result item's, which every area search reads."""
    if value is not None:
        parse_geometry(
            value,
            MAX_FOOTPRINT_VERTICES,
            name=f"{href}: the item's geometry",
            simple_features=False,
        )


def check_bbox(value: object, href: str) -> None:
    """A STAC bbox: 4 or 6 finite numbers, latitudes in [-90, 90] with south <= north,
    longitudes in [-180, 180]; west > east is allowed (a box across the antimeridian)."""
    if value is None:
        return
    if not isinstance(value, list | tuple) or len(value) not in (4, 6):
        raise BadInputError(f"{href}: the item's bbox must be a list of 4 or 6 numbers")
    numbers = [_number(v) for v in value]
    if any(n is None for n in numbers):
        raise BadInputError(f"{href}: the item's bbox {value!r:.200} holds a non-finite number")
    n = [float(v) for v in numbers if v is not None]
    if len(n) == 4:
        west, south, east, north = n
    else:
        west, south, low, east, north, high = n
        if low > high:
            raise BadInputError(f"{href}: the item's bbox has its minimum height above its maximum")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise BadInputError(f"{href}: the item's bbox has a longitude outside [-180, 180]")
    if not (-90 <= south <= north <= 90):
        raise BadInputError(
            f"{href}: the item's bbox latitudes must satisfy -90 <= south <= north <= 90"
        )


def parse_instant(value: object, what: str, href: str) -> datetime:
    """An RFC 3339 time (``Z`` or an offset); a naive one is taken as UTC by the caller."""
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"{href}: {what} must be an RFC 3339 time string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise BadInputError(
            f"{href}: {what} {value!r:.80} is not an RFC 3339 time (2020-06-21T10:30:00Z)"
        ) from None
    if instant.tzinfo is not None:
        try:
            instant.astimezone(UTC)  # results are indexed in UTC
        except OverflowError:
            raise BadInputError(
                f"{href}: {what} {value!r:.80} is outside the years 1..9999 in UTC"
            ) from None
    return instant


def check_datetime(properties: dict[str, Any], href: str) -> None:
    """``datetime``, or (when it is null) ``start_datetime`` and ``end_datetime`` in order."""
    when = properties.get("datetime")
    if when is not None:
        parse_instant(when, "properties.datetime", href)
    start, end = properties.get("start_datetime"), properties.get("end_datetime")
    if when is None and (start is None or end is None):
        raise BadInputError(
            f"{href}: the item has no datetime: set properties.datetime, or start_datetime "
            "and end_datetime"
        )
    if start is not None or end is not None:
        first = parse_instant(start, "properties.start_datetime", href)
        last = parse_instant(end, "properties.end_datetime", href)
        if _aware(first) > _aware(last):
            raise BadInputError(f"{href}: start_datetime is after end_datetime")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
