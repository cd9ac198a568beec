"""Which asset of a STAC item holds which Sentinel-2 band: the rules live in
:mod:`eostream.shared.sentinel2` (ADR 0010), shared with ingest; these names stay for callers."""

from __future__ import annotations

from eostream.shared.sentinel2 import (
    COMMON_NAMES,
    SCL_KEYS,
    SPECTRAL_ORDER,
    BandSource,
    band_id,
    scl_href,
)
from eostream.shared.sentinel2 import band_sources as map_bands

#: Earth Search v1 asset keys / eo:bands names -> Sentinel-2 band ids.
ALIASES: dict[str, str] = COMMON_NAMES
S2_BANDS: tuple[str, ...] = SPECTRAL_ORDER

__all__ = ["ALIASES", "S2_BANDS", "SCL_KEYS", "BandSource", "band_id", "map_bands", "scl_href"]
