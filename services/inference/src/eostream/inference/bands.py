"""Which asset of a STAC item holds which Sentinel-2 band (pure, no I/O).

Catalogues name band assets differently: Earth Search v1 uses common names (``red``,
``nir08``), Earth Search v0 and Planetary Computer use band ids (``B04``, ``B8A``), and
``eo:bands`` entries may carry either. :func:`band_id` folds all of these to the band id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eostream.shared.sentinel2 import COMMON_NAMES, SPECTRAL_ORDER

#: Earth Search v1 asset keys / eo:bands names -> Sentinel-2 band ids.
ALIASES: dict[str, str] = COMMON_NAMES
S2_BANDS: tuple[str, ...] = SPECTRAL_ORDER
SCL_KEYS = ("scl", "SCL")


def band_id(name: str) -> str | None:
    """``B4``, ``b04``, ``red``, ``B04`` -> ``B04``; anything else -> None."""
    lowered = name.strip().lower()
    if lowered in ALIASES:
        return ALIASES[lowered]
    upper = lowered.upper()
    if upper.startswith("B") and len(upper) in (2, 3):
        digits = upper[1:]
        candidate = "B8A" if digits == "8A" else f"B{digits.zfill(2)}" if digits.isdigit() else ""
        if candidate in S2_BANDS:
            return candidate
    return None


@dataclass(frozen=True)
class BandSource:
    """One model band: read band ``index`` (1-based) of the asset at ``href``."""

    band: str
    asset_key: str
    href: str
    index: int = 1


def _asset_bands(key: str, asset: Mapping[str, Any]) -> list[str | None]:
    eo = asset.get("eo:bands") or []
    if len(eo) > 1:
        return [
            band_id(str(b.get("name", ""))) or band_id(str(b.get("common_name", ""))) for b in eo
        ]
    own = band_id(key)
    if own is None and len(eo) == 1:
        own = band_id(str(eo[0].get("name", "")))
    return [own]


def map_bands(
    assets: Mapping[str, Mapping[str, Any]], wanted: Sequence[str]
) -> tuple[dict[str, BandSource], list[str]]:
    """Find each wanted band among the item's assets; return the sources and the missing bands.

    Single-band assets win over multi-band ones (``visual`` is an 8-bit rendering).
    """
    found: dict[str, BandSource] = {}
    multi: dict[str, BandSource] = {}
    for key, asset in assets.items():
        href = str(asset.get("href", ""))
        media = str(asset.get("type", ""))
        if key.endswith("-jp2") or "jp2" in media or key in ("visual", "thumbnail"):
            continue
        ids = _asset_bands(key, asset)
        for index, bid in enumerate(ids, start=1):
            if bid is None or bid not in wanted:
                continue
            source = BandSource(bid, key, href, index)
            if len(ids) == 1:
                found.setdefault(bid, source)
            else:
                multi.setdefault(bid, source)
    for bid, source in multi.items():
        found.setdefault(bid, source)
    missing = [b for b in wanted if b not in found]
    return {b: found[b] for b in wanted if b in found}, missing


def scl_href(assets: Mapping[str, Mapping[str, Any]]) -> str | None:
    for key in SCL_KEYS:
        if key in assets and assets[key].get("href"):
            return str(assets[key]["href"])
    return None
