"""Sentinel-2 facts every service derives from a STAC item, each written once (ADR 0010).

Pure functions over item JSON, no I/O: which band an asset name means (:func:`band_id`), which
asset holds each band (:func:`band_sources`), which bands an item carries (:func:`bands_of`),
its processing level (:func:`processing_level`) and baseline (:func:`processing_baseline`), and
the DN-to-reflectance rule that follows from them (:func:`asset_radiometry`). A field these read
with the wrong type (``roles`` not a list of strings, a ``raster:bands`` scale that is not a
number) raises :class:`~eostream.shared.errors.InvalidItemError`; :func:`check_item` finds the
first such field of a whole item before any work is done. Ingest builds its
``SceneDiscovered`` events with them and inference reads scenes with them, on its event path and
on its REST path alike, so a scene gets the same level, offset and bands whichever way it comes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eostream.shared.errors import InvalidItemError
from eostream.shared.events import Level
from eostream.shared.modelcard import EUROSAT_MS_FILE_ORDER

#: STAC common names (Earth Search v1 asset keys, eo:bands names) -> Sentinel-2 band ids.
COMMON_NAMES: dict[str, str] = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}

#: The 13 band ids in spectral order (B8A between B08 and B09). EuroSAT MS files store them in
#: another order, with B8A last: see eostream.shared.modelcard.EUROSAT_MS_FILE_ORDER.
SPECTRAL_ORDER: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip

#: The order events carry band ids in (``SceneDiscovered.bands``).
EVENT_ORDER: tuple[str, ...] = EUROSAT_MS_FILE_ORDER

#: Asset keys of the scene classification layer (cloud mask) of L2A items.
SCL_KEYS: tuple[str, ...] = ("scl", "SCL")

#: DN of a harmonised reflectance of 1.0, and the offset of processing baseline 04.00 and later.
QUANTIFICATION = 10000.0
BASELINE_OFFSET_DN = -1000.0

_BAND = re.compile(r"^B0?(\d{1,2})(A?)$", re.IGNORECASE)
_SUFFIX = re.compile(r"[-_](jp2|cog|tif|\d{2}m)$", re.IGNORECASE)
_BASELINE_IN_PRODUCT_ID = re.compile(r"_N(\d{2})(\d{2})_")
#: Assets with these roles or keys are renderings (8-bit) or previews, never a band's source.
_NOT_BAND_ROLES = frozenset({"thumbnail", "overview", "visual"})
_NOT_BAND_KEYS = frozenset({"visual", "thumbnail"})


# --- band names -------------------------------------------------------------------------------
def band_id(name: str) -> str | None:
    """``blue``, ``B2``, ``B02``, ``b04``, ``blue-jp2``, ``red_20m``, ``B08A``, ``b8a`` -> the
    band id (``B01``..``B12``, ``B8A``); anything else (``scl``, ``visual``, ``B13``) -> None."""
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


def ordered(names: Iterable[str], order: Sequence[str] = EVENT_ORDER) -> tuple[str, ...]:
    """The band ids among ``names``, in ``order`` (events' order unless told)."""
    found = set(names)
    return tuple(b for b in order if b in found)


# --- which asset holds which band -------------------------------------------------------------
@dataclass(frozen=True)
class BandSource:
    """One band: read band ``index`` (1-based) of the asset ``asset_key`` at ``href``."""

    band: str
    asset_key: str
    href: str
    index: int = 1


def _roles(key: str, asset: Mapping[str, Any]) -> set[str]:
    roles = asset.get("roles")
    if roles is None:
        return set()
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise InvalidItemError(f"asset {key!r:.80}: roles must be a list of strings")
    return set(roles)


def _is_band_asset(key: str, asset: Any) -> bool:
    if not isinstance(asset, Mapping) or not asset.get("href") or key in _NOT_BAND_KEYS:
        return False
    return not _NOT_BAND_ROLES & _roles(key, asset)


def _is_jp2(key: str, asset: Mapping[str, Any]) -> bool:
    return key.lower().endswith("-jp2") or "jp2" in str(asset.get("type", "")).lower()


_RESOLUTION_IN_KEY = re.compile(r"[-_](\d{2})m$", re.IGNORECASE)


def _resolution(key: str, asset: Mapping[str, Any], index: int) -> float:
    """The asset's ground sampling distance in metres for its band ``index`` (1-based): its
    ``raster:bands`` entry's ``spatial_resolution``, else the asset's ``gsd``, else a ``_20m``
    suffix of its key; 0 when none says (taken as the band's native resolution)."""
    bands = asset.get("raster:bands")
    entry = bands[index - 1] if isinstance(bands, list) and 0 < index <= len(bands) else None
    if isinstance(entry, Mapping):
        found = entry.get("spatial_resolution")
        if isinstance(found, int | float) and math.isfinite(found) and found > 0:
            return float(found)
    gsd = asset.get("gsd")
    if isinstance(gsd, int | float) and math.isfinite(gsd) and gsd > 0:
        return float(gsd)
    suffix = _RESOLUTION_IN_KEY.search(key)
    return float(suffix[1]) if suffix else 0.0


def _names(entries: Any, what: str = "eo:bands") -> list[Mapping[str, Any]]:
    """The objects of a list field (``eo:bands``, ``raster:bands``); absent: none."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise InvalidItemError(f"{what} must be a list of objects")
    return [e for e in entries if isinstance(e, Mapping)]


def _asset_bands(key: str, asset: Mapping[str, Any]) -> list[str | None]:
    """The band id of each band of the asset, in file order (None: not a Sentinel-2 band)."""
    eo = _names(asset.get("eo:bands"), f"asset {key!r:.80}: eo:bands")
    if len(eo) > 1:
        return [
            band_id(str(b.get("name", ""))) or band_id(str(b.get("common_name", ""))) for b in eo
        ]
    own = band_id(key)
    if own is None and len(eo) == 1:
        own = band_id(str(eo[0].get("name", "")))
    return [own]


def band_sources(
    assets: Mapping[str, Any], wanted: Sequence[str] = SPECTRAL_ORDER
) -> tuple[dict[str, BandSource], list[str]]:
    """Where each wanted band is among an item's assets, and the wanted bands no asset holds.

    A band found in several assets comes from the best one: a single-band file before a band of
    a multi-band file, and a cloud-optimised GeoTIFF before a JPEG 2000 (Earth Search's ``-jp2``
    duplicates); among those, the finest resolution (stactools' L2A items list the 20 m and
    60 m resamplings of the 10 m bands, ``blue_20m`` before ``blue``); among equals, the first
    asset. Renderings (``visual``, thumbnails, overviews) are never a source.
    """
    best: dict[str, tuple[tuple[int, float], BandSource]] = {}
    for key, asset in assets.items():
        if not _is_band_asset(key, asset):
            continue
        ids = _asset_bands(key, asset)
        kind = (2 if _is_jp2(key, asset) else 0) + (0 if len(ids) == 1 else 1)
        for index, bid in enumerate(ids, start=1):
            if bid is None or bid not in wanted:
                continue
            rank = (kind, _resolution(key, asset, index))
            if bid not in best or rank < best[bid][0]:
                best[bid] = (rank, BandSource(bid, key, str(asset["href"]), index))
    missing = [b for b in wanted if b not in best]
    return {b: best[b][1] for b in wanted if b in best}, missing


def bands_of(item: Mapping[str, Any]) -> tuple[str, ...]:
    """The bands an item carries, in events' order: those :func:`band_sources` finds, plus the
    item-level ``eo:bands`` when a data asset holds several bands without naming them (a
    EuroSAT patch; those are not located, since such items' band order cannot be trusted)."""
    assets = _assets(item)
    found, _ = band_sources(assets, SPECTRAL_ORDER)
    names = set(found)
    multiband = any(
        _is_band_asset(key, asset)
        and len(_names(asset.get("raster:bands"), f"asset {key!r:.80}: raster:bands")) > 1
        and "data" in _roles(key, asset)
        for key, asset in assets.items()
    )
    if multiband:
        properties = _properties(item)
        item_names = (
            band_id(str(b.get("name", "")))
            for b in _names(properties.get("eo:bands"), "properties.eo:bands")
        )
        names.update(n for n in item_names if n is not None)
    return ordered(names)


def scl_href(assets: Mapping[str, Any]) -> str | None:
    """The href of the scene classification layer, if the item has one."""
    for key in SCL_KEYS:
        asset = assets.get(key)
        if isinstance(asset, Mapping) and asset.get("href"):
            return str(asset["href"])
    return None


# --- processing level and baseline ------------------------------------------------------------
def processing_level(item: Mapping[str, Any]) -> Level | None:
    """L1C or L2A from ``s2:processing_level``, ``processing:level``, ``s2:product_type``, the
    product id, the collection or the item id (first that names one and only one); else None."""
    properties = _properties(item)
    clues = [
        properties.get("s2:processing_level"),
        properties.get("processing:level"),
        properties.get("s2:product_type"),
        properties.get("sentinel:product_id"),
        item.get("collection"),
        item.get("id"),
    ]
    for clue in clues:
        if not isinstance(clue, str):
            continue
        text = clue.upper().replace("-", "").replace("_", "").replace("LEVEL", "L")
        has_2a, has_1c = "L2A" in text or "MSI2A" in text, "L1C" in text or "MSI1C" in text
        if has_2a != has_1c:
            return "L2A" if has_2a else "L1C"
    return None


def processing_baseline(item: Mapping[str, Any]) -> str | None:
    """``s2:processing_baseline``, else the ``Nxxyy`` of the product id or URI (Earth Search v0
    items have only ``sentinel:product_id``)."""
    properties = _properties(item)
    baseline = properties.get("s2:processing_baseline")
    if baseline is not None:
        return str(baseline)
    for key in ("sentinel:product_id", "s2:product_uri"):
        match = _BASELINE_IN_PRODUCT_ID.search(str(properties.get(key) or ""))
        if match:
            return f"{match.group(1)}.{match.group(2)}"
    return None


def parse_baseline(baseline: str | None) -> tuple[int, int] | None:
    """``"04.00"`` -> ``(4, 0)``; None when absent or unreadable."""
    if not baseline:
        return None
    try:
        major, _, minor = baseline.strip().partition(".")
        return int(major), int(minor or 0)
    except ValueError:
        return None


# --- radiometry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Radiometry:
    """``reflectance = DN * scale + offset``; ``source`` says which rule gave it."""

    scale: float
    offset: float
    source: str


def baseline_radiometry(baseline: str | None) -> Radiometry:
    """Baseline 04.00 or later: ``(DN - 1000) / 10000``; earlier or unknown: ``DN / 10000``."""
    parsed = parse_baseline(baseline)
    if parsed is not None and parsed >= (4, 0):
        return Radiometry(
            1 / QUANTIFICATION, BASELINE_OFFSET_DN / QUANTIFICATION, "baseline>=04.00"
        )
    return Radiometry(1 / QUANTIFICATION, 0.0, "baseline<04.00" if parsed else "default")


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidItemError(f"{what} must be a finite number, not {value!r:.80}")
    return float(value)


def _scale_offset(rb: Mapping[str, Any], what: str) -> tuple[float | None, float | None]:
    """A ``raster:bands`` entry's scale and offset (None: absent or null)."""
    scale, offset = rb.get("scale"), rb.get("offset")
    return (
        None if scale is None else _finite(scale, f"{what}.scale"),
        None if offset is None else _finite(offset, f"{what}.offset"),
    )


def asset_radiometry(asset: Mapping[str, Any], band_index: int, baseline: str | None) -> Radiometry:
    """The asset's ``raster:bands`` scale/offset when it has them, else the baseline rule."""
    raster_bands = _names(asset.get("raster:bands"), "raster:bands")
    if len(raster_bands) >= band_index:
        scale, offset = _scale_offset(
            raster_bands[band_index - 1], f"raster:bands[{band_index - 1}]"
        )
        if scale is not None or offset is not None:
            return Radiometry(
                1.0 if scale is None else scale, 0.0 if offset is None else offset, "raster:bands"
            )
    return baseline_radiometry(baseline)


# --- the fields above, checked at once --------------------------------------------------------
def _properties(item: Mapping[str, Any]) -> Mapping[str, Any]:
    properties = item.get("properties")
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise InvalidItemError("the item's properties must be an object")
    return properties


def _assets(item: Mapping[str, Any]) -> Mapping[str, Any]:
    assets = item.get("assets")
    if assets is None:
        return {}
    if not isinstance(assets, Mapping):
        raise InvalidItemError("the item's assets must be an object")
    return assets


def _folded(value: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(value).lower())


def other_mission(item: Mapping[str, Any]) -> str | None:
    """What names another mission than Sentinel-2 (``platform 'landsat-8'``), or None: an item
    whose ``platform``, ``constellation`` or ``instruments`` say so would have its bands read as
    Sentinel-2's (a Landsat ``nir08`` as B8A). Silence is no objection (EuroSAT patches, tests)."""
    properties = _properties(item)
    platform, constellation = properties.get("platform"), properties.get("constellation")
    if isinstance(platform, str) and not _folded(platform).startswith("sentinel2"):
        return f"platform {platform!r:.60}"
    if isinstance(constellation, str) and _folded(constellation) != "sentinel2":
        return f"constellation {constellation!r:.60}"
    instruments = properties.get("instruments")
    if isinstance(instruments, list) and instruments and "msi" not in map(_folded, instruments):
        return f"instruments {instruments!r:.60}"
    return None


def check_item(item: Mapping[str, Any]) -> None:
    """Raise :class:`~eostream.shared.errors.InvalidItemError` naming the first field this
    module reads that has the wrong type: the properties' and each asset's ``eo:bands``, each
    asset's ``href``, ``roles`` and ``raster:bands`` (whose scale and offset must be finite
    numbers); and that it is no other mission's (:func:`other_mission`). Run it before any
    work, so a bad item is refused, not a crash half-way."""
    _names(_properties(item).get("eo:bands"), "properties.eo:bands")
    mission = other_mission(item)
    if mission:
        raise InvalidItemError(f"not a Sentinel-2 item: {mission} (eostream reads Sentinel-2 MSI)")
    for key, asset in _assets(item).items():
        if not isinstance(asset, Mapping):
            continue  # not an asset: never read
        name = f"asset {key!r:.80}"
        href = asset.get("href")
        if href is not None and not isinstance(href, str):
            raise InvalidItemError(f"{name}: href must be a string")
        _roles(key, asset)
        _names(asset.get("eo:bands"), f"{name}: eo:bands")
        for index, rb in enumerate(_names(asset.get("raster:bands"), f"{name}: raster:bands")):
            _scale_offset(rb, f"{name}: raster:bands[{index}]")
