"""Parsing of shared query parameters (pure): bbox and RFC 3339 datetime intervals."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time

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


#: a calendar date alone (``2021-12-31``): the whole day, in UTC
DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _instant(text: str, *, end: bool = False) -> datetime | None:
    """An RFC 3339 date-time; a date alone is its day's first instant (UTC), or with ``end``
    its last, so ``2020-01-01/2021-12-31`` and ``2021-12-31`` take in the whole last day."""
    if text in ("", ".."):
        return None
    if DATE_ONLY.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise BadInputError(f"{text!r} is not a calendar date") from None
        return datetime.combine(day, time.max if end else time.min, UTC)
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
    """``a/b``, ``../b``, ``a/..`` or a single instant (a date alone: its whole day)."""
    if not text:
        return None, None
    if "/" in text:
        start_text, _, end_text = text.partition("/")
        start, end = _instant(start_text), _instant(end_text, end=True)
        if start and end and start > end:
            raise BadInputError(f"datetime interval {text!r} ends before it starts")
        return start, end
    return _instant(text), _instant(text, end=True)
