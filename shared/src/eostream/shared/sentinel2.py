"""Sentinel-2 band names: the one table every service uses to fold providers' spellings."""

from __future__ import annotations

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
