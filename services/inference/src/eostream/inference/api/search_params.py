"""Search parameters of /stac, parsed and applied without I/O: ``sortby`` (Sort extension),
``fields`` (Fields extension), ``intersects`` and ``datetime``; bad values raise BadInputError
(400)."""

from __future__ import annotations

import json
import re
from typing import Any

import shapely
import shapely.geometry

from eostream.inference.api.params import parse_datetime
from eostream.inference.errors import BadInputError
from eostream.inference.geojson import bbox_shape, parse_geometry
from eostream.inference.results import ResultRecord

_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def parse_sortby(value: Any) -> list[tuple[str, bool]] | None:
    """``sortby``: ``+a,-b`` (GET) or ``[{"field", "direction"}]`` (POST): (field, descending)."""
    if value is None or value == "":
        return None
    keys: list[tuple[str, bool]] = []
    if isinstance(value, str):
        for part in value.split(","):
            text = part.strip()
            descending = text.startswith("-")
            name = text[1:] if text[:1] in "+-" else text  # one sign ("-" alone was a field)
            if not name:
                raise BadInputError(f"sortby {value[:100]!r} has an empty field")
            keys.append((name, descending))
        return keys
    if not isinstance(value, list):
        raise BadInputError("sortby must be a list of {field, direction}")
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("field"), str):
            raise BadInputError(f"sortby entry {str(entry)[:100]} has no field")
        direction = entry.get("direction", "asc")
        if direction not in ("asc", "desc"):
            raise BadInputError(f"sortby direction {direction!r} is not asc or desc")
        keys.append((entry["field"], direction == "desc"))
    return keys


def parse_fields(value: Any) -> tuple[list[str] | None, list[str]] | None:
    """``fields``: ``a,-b`` (GET) or ``{"include": [], "exclude": []}`` (POST)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            return None
        include = [p.lstrip("+") for p in parts if not p.startswith("-")]
        return include or None, [p[1:] for p in parts if p.startswith("-")]
    lists = [value.get(k) or [] for k in ("include", "exclude")] if isinstance(value, dict) else []
    if not lists or not all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in lists
    ):
        raise BadInputError("fields must be {include: [...], exclude: [...]} of strings")
    # include absent: the whole item less the excluded; empty or null: the default fields
    return (list(lists[0]) if "include" in value else None), list(lists[1])


#: the fields answered when ``fields`` is given, before its include and exclude
_DEFAULT = (
    "type",
    "stac_version",
    "id",
    "geometry",
    "bbox",
    "links",
    "assets",
    "collection",
    "properties.datetime",
)


def pick_fields(
    item: dict[str, Any], include: list[str] | None, exclude: list[str]
) -> dict[str, Any]:
    """The Fields extension: the ``include``d (dotted) paths and the four an item needs (the
    default fields when the include list is empty; the whole item when there is none), less
    the ``exclude``d ones; a path named in both, or included below an excluded one, is kept."""
    if include is None:  # the whole item, less the excluded
        whole = {k: (dict(v) if isinstance(v, dict) else v) for k, v in item.items()}
        for path in exclude:
            head, _, rest = path.partition(".")
            if not rest:
                whole.pop(head, None)
            elif isinstance(whole.get(head), dict):
                whole[head].pop(rest, None)
        return whole
    dropped = set(exclude) - set(include)

    def kept(path: str) -> bool:
        parts = path.split(".")
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        return path in include or not prefixes & dropped

    picked: dict[str, Any] = {}
    base = ("type", "stac_version", "id", "links") if include else _DEFAULT
    for path in dict.fromkeys([*base, *include]):
        if not kept(path):
            continue
        head, _, rest = path.partition(".")
        if head not in item:
            continue
        if not rest:
            if isinstance(item[head], dict) and head in picked:
                picked[head] = {**item[head], **picked[head]}
            else:
                picked[head] = item[head]
        elif isinstance(item[head], dict) and rest in item[head]:
            if not isinstance(picked.get(head), dict):
                picked[head] = {}
            picked[head][rest] = item[head][rest]
    if isinstance(item.get("properties"), dict) and "properties" in picked:
        # an excluded property below an included ``properties``
        for path in dropped:
            head, _, rest = path.partition(".")
            if head == "properties" and rest and "properties" in include:
                picked["properties"].pop(rest, None)
    return picked


def footprint(record: ResultRecord) -> shapely.Geometry:
    """A result's footprint: its geometry, else (none, or one that is not GeoJSON: a result
    made before scenes' geometries were checked) its bbox."""
    geometry = record.item.get("geometry")
    if geometry:
        try:
            return shapely.geometry.shape(geometry)
        except (ValueError, TypeError, IndexError, AttributeError, shapely.errors.ShapelyError):
            pass
    return bbox_shape(record.bbox) if record.bbox else shapely.Point()


def parse_intersects(value: Any) -> shapely.Geometry | None:
    """``intersects``: a GeoJSON geometry (a JSON text in GET), or 400."""
    if value is None or value == "":
        return None
    try:
        geojson = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise BadInputError("intersects is not a GeoJSON geometry: not JSON") from None
    except RecursionError:  # json.loads of thousands of nested brackets
        raise BadInputError("intersects is not a GeoJSON geometry: nested too deep") from None
    return parse_geometry(geojson, name="intersects")


def parse_when(text: str | None) -> tuple[Any, Any]:
    """An RFC 3339 instant or interval (``..`` or empty for an open end, not both), or 400."""
    if not text:
        return None, None
    upper = text.upper()
    ends = upper.split("/") if "/" in upper else [upper]
    open_ends = [e for e in ends if e in ("", "..")]
    if len(ends) > 2 or len(open_ends) == len(ends):
        raise BadInputError(f"datetime {text!r} is not an RFC 3339 instant or interval")
    for end in ends:
        if end not in ("", "..") and not _INSTANT.fullmatch(end):
            raise BadInputError(f"datetime {text!r} is not an RFC 3339 instant or interval")
    return parse_datetime(upper)  # in UTC; a time outside years 1-9999 there is a 400
