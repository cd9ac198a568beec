"""Parsing of shared query parameters (pure): bbox and RFC 3339 datetime intervals."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from eostream.inference.errors import BadInputError


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None or text == "":
        return None
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise BadInputError(f"bbox {text!r} must be four numbers: minx,miny,maxx,maxy") from None
    if len(parts) == 6:
        parts = [parts[0], parts[1], parts[3], parts[4]]
    if len(parts) != 4 or not all(math.isfinite(p) for p in parts):  # NaN, inf: no box
        raise BadInputError(f"bbox {text!r} must be four numbers: minx,miny,maxx,maxy")
    minx, miny, maxx, maxy = parts
    if minx > maxx:
        raise BadInputError(
            f"bbox {text!r} crosses the antimeridian (minx > maxx), which is not supported: "
            "search each side apart (minx..180 and -180..maxx)"
        )
    if miny > maxy:
        raise BadInputError(f"bbox {text!r}: miny must not exceed maxy")
    return minx, miny, maxx, maxy


def _instant(text: str) -> datetime | None:
    if text in ("", ".."):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInputError(f"{text!r} is not an RFC 3339 date-time") from None
    if not value.tzinfo:
        return value.replace(tzinfo=UTC)
    try:  # in UTC here: 0001-01-01T00:00:00+01:00 has no UTC year to be in
        return value.astimezone(UTC)
    except OverflowError:
        raise BadInputError(f"{text!r} is outside the years 1 to 9999 in UTC") from None


def parse_datetime(text: str | None) -> tuple[datetime | None, datetime | None]:
    """``a/b``, ``../b``, ``a/..`` or a single instant."""
    if not text:
        return None, None
    if "/" in text:
        start_text, _, end_text = text.partition("/")
        start, end = _instant(start_text), _instant(end_text)
        if start and end and start > end:
            raise BadInputError(f"datetime interval {text!r} ends before it starts")
        return start, end
    instant = _instant(text)
    return instant, instant
