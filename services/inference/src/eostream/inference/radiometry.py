"""Digital numbers -> harmonised reflectance -> the model's units (pure functions).

The reflectance rule is :func:`eostream.shared.sentinel2.asset_radiometry` (ADR 0010). Sentinel-2
products with processing baseline 04.00 or later carry a radiometric offset of -1000:
``reflectance = (DN - 1000) / 10000``. Earlier baselines have none. An item's ``raster:bands``
``scale``/``offset`` win when present (Earth Search v1 publishes them); otherwise the offset is
derived from the processing baseline
(``s2:processing_baseline``, else the product id's ``Nxxyy``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from eostream.shared.modelcard import BandScaling
from eostream.shared.sentinel2 import (
    BASELINE_OFFSET_DN,
    QUANTIFICATION,
    Radiometry,
    asset_radiometry,
    baseline_radiometry,
    parse_baseline,
)

__all__ = [
    "BASELINE_OFFSET_DN",
    "QUANTIFICATION",
    "SCL_CLOUD_CLASSES",
    "Radiometry",
    "cloud_mask",
    "for_asset",
    "from_baseline",
    "parse_baseline",
    "to_units",
    "units_into",
]

#: SCL classes treated as cloud or shadow: 3 shadow, 8/9 cloud medium/high, 10 thin cirrus.
SCL_CLOUD_CLASSES: tuple[int, ...] = (3, 8, 9, 10)
#: The rules DN -> reflectance live in :mod:`eostream.shared.sentinel2`; these names stay.
from_baseline = baseline_radiometry
for_asset = asset_radiometry


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
    if bias:  # most products have none: a pass over the strip saved
        out += np.float32(bias)
    if scaling.clip_min is not None or scaling.clip_max is not None:
        np.clip(out, scaling.clip_min, scaling.clip_max, out=out)


_CLOUDY = np.zeros(256, bool)
_CLOUDY[list(SCL_CLOUD_CLASSES)] = True


def cloud_mask(scl: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    return np.asarray(_CLOUDY[scl.astype(np.uint8, copy=False)])
