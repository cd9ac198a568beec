"""Sentinel-2 band names as providers spell them, normalised to B01..B12, B8A."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from eostream.shared.modelcard import EUROSAT_MS_FILE_ORDER
from eostream.shared.sentinel2 import COMMON_NAMES

#: The canonical names, in the order events carry them.
CANONICAL = EUROSAT_MS_FILE_ORDER

_BAND = re.compile(r"^B0?(\d{1,2})(A?)$", re.IGNORECASE)
_SUFFIX = re.compile(r"[-_](jp2|cog|tif|\d{2}m)$", re.IGNORECASE)


def normalise(name: str) -> str | None:
    """``blue``, ``B2``, ``B02``, ``blue-jp2``, ``B08A``, ``b8a`` -> canonical name, or None."""
    text = name.strip()
    while True:
        stripped = _SUFFIX.sub("", text)
        if stripped == text:
            break
        text = stripped
    common = COMMON_NAMES.get(text.lower())
    if common is not None:
        return common
    match = _BAND.match(text)
    if match is None:
        return None
    number, a = int(match.group(1)), match.group(2).upper()
    if a:
        return "B8A" if number == 8 else None
    return f"B{number:02d}" if 1 <= number <= 12 else None


def ordered(names: Iterable[str]) -> tuple[str, ...]:
    found = set(names)
    return tuple(b for b in CANONICAL if b in found)


def bands_of(item: dict[str, Any]) -> tuple[str, ...]:
    """Bands an item carries: data asset keys, their eo:bands names, and item-level eo:bands
    when a data asset holds several bands (a multi-band file such as a EuroSAT patch)."""
    assets = item.get("assets") or {}
    found: set[str] = set()
    multiband_asset = False
    for key, asset in assets.items():
        if not isinstance(asset, dict) or not asset.get("href"):
            continue
        roles = asset.get("roles") or []
        if "thumbnail" in roles or "overview" in roles or "visual" in roles:
            continue
        band = normalise(str(key))
        if band is not None:
            found.add(band)
        names = [b.get("name", "") for b in asset.get("eo:bands") or [] if isinstance(b, dict)]
        found.update(n for n in map(normalise, names) if n is not None)
        if len(asset.get("raster:bands") or []) > 1 and "data" in roles:
            multiband_asset = True
    if multiband_asset:
        properties = item.get("properties") or {}
        names = [b.get("name", "") for b in properties.get("eo:bands") or [] if isinstance(b, dict)]
        found.update(n for n in map(normalise, names) if n is not None)
    return ordered(found)
