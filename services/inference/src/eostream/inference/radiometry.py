"""Digital numbers -> harmonised reflectance -> the model's units (pure functions).

Sentinel-2 products with processing baseline 04.00 or later carry a radiometric offset of -1000:
``reflectance = (DN - 1000) / 10000``. Earlier baselines have none. An item's ``raster:bands``
``scale``/``offset`` win when present (Earth Search v1 publishes them); otherwise the offset is
derived from ``s2:processing_baseline``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from eostream.shared.modelcard import BandScaling

QUANTIFICATION = 10000.0
BASELINE_OFFSET_DN = -1000.0
#: SCL classes treated as cloud or shadow: 3 shadow, 8/9 cloud medium/high, 10 thin cirrus.
SCL_CLOUD_CLASSES: tuple[int, ...] = (3, 8, 9, 10)


@dataclass(frozen=True)
class Radiometry:
    """``reflectance = DN * scale + offset``."""

    scale: float
    offset: float
    source: str


def parse_baseline(baseline: str | None) -> tuple[int, int] | None:
    if not baseline:
        return None
    try:
        major, _, minor = baseline.strip().partition(".")
        return int(major), int(minor or 0)
    except ValueError:
        return None


def from_baseline(baseline: str | None) -> Radiometry:
    parsed = parse_baseline(baseline)
    if parsed is not None and parsed >= (4, 0):
        return Radiometry(
            1 / QUANTIFICATION, BASELINE_OFFSET_DN / QUANTIFICATION, "baseline>=04.00"
        )
    return Radiometry(1 / QUANTIFICATION, 0.0, "baseline<04.00" if parsed else "default")


def for_asset(asset: Mapping[str, Any], band_index: int, baseline: str | None) -> Radiometry:
    """The asset's ``raster:bands`` scale/offset if it has them, else the baseline rule."""
    raster_bands = asset.get("raster:bands") or []
    if len(raster_bands) >= band_index:
        rb = raster_bands[band_index - 1]
        if "scale" in rb or "offset" in rb:
            return Radiometry(
                float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0)), "raster:bands"
            )
    return from_baseline(baseline)


def to_units(
    dn: npt.NDArray[Any], radiometry: Radiometry, scaling: BandScaling
) -> npt.NDArray[np.float32]:
    """One band of DNs -> the model's input units, in float32."""
    out = np.empty(dn.shape, np.float32)
    units_into(dn, radiometry, scaling, out)
    return out


def units_into(
    dn: npt.NDArray[Any], radiometry: Radiometry, scaling: BandScaling, out: npt.NDArray[np.float32]
) -> None:
    """:func:`to_units` fused into one multiply-add, written into ``out`` (no temporaries)."""
    gain = radiometry.scale * scaling.scale
    bias = radiometry.offset * scaling.scale + scaling.offset
    np.multiply(dn, np.float32(gain), out=out, casting="unsafe")
    out += np.float32(bias)
    if scaling.clip_min is not None or scaling.clip_max is not None:
        np.clip(out, scaling.clip_min, scaling.clip_max, out=out)


_CLOUDY = np.zeros(256, bool)
_CLOUDY[list(SCL_CLOUD_CLASSES)] = True


def cloud_mask(scl: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    return np.asarray(_CLOUDY[scl.astype(np.uint8, copy=False)])
