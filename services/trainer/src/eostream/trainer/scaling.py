"""How reflectance becomes a model's input units: the ModelCard's per-band scaling.

For ``ms13`` the model takes reflectance itself (scale 1, offset 0). For ``rgb`` the model takes
the EuroSAT JPEG's 0..255 values, an 8-bit rendering of B04/B03/B02 whose stretch EuroSAT does
not publish. It is fitted here per band by least squares (``units ~ a * reflectance + b``) on the
real pairs: the MS GeoTIFFs share file names with the JPEGs. Saturated pixels (0 or 255 in the
JPEG) are left out of the fit; the result is clipped to 0..255 like the JPEG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eostream.shared.holdout import RGB_DIR
from eostream.shared.modelcard import BAND_SETS, BandScaling
from eostream.trainer.catalog import list_sources
from eostream.trainer.datasets import read_ms, read_rgb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScalingFit:
    scaling: tuple[BandScaling, ...]
    pairs: int
    r2: tuple[float, ...]


def identity_scaling(band_set: str) -> tuple[BandScaling, ...]:
    return tuple(BandScaling(band=b, scale=1.0, offset=0.0) for b in BAND_SETS[band_set])


def fit_linear(reflectance: np.ndarray, units: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``units ~ a * reflectance + b``; returns (a, b, r squared)."""
    design = np.stack([reflectance, np.ones_like(reflectance)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, units, rcond=None)
    predicted = design @ np.array([a, b])
    ss_res = float(((units - predicted) ** 2).sum())
    ss_tot = float(((units - units.mean()) ** 2).sum()) or 1.0
    return float(a), float(b), 1.0 - ss_res / ss_tot


def fit_rgb_scaling(data_dir: Path) -> ScalingFit:
    bands = BAND_SETS["rgb"]
    refl: list[np.ndarray] = []
    units: list[np.ndarray] = []
    for source in list_sources(data_dir, "ms13"):
        jpeg = data_dir / RGB_DIR / source.class_name / f"{source.stem}.jpg"
        if not jpeg.is_file():
            continue
        refl.append(read_ms(data_dir / source.relpath, bands).reshape(3, -1))
        units.append(read_rgb(jpeg).reshape(3, -1).astype(np.float64))
    if not refl:
        raise FileNotFoundError(f"no MS/RGB pairs under {data_dir} to fit the RGB scaling")
    r = np.concatenate(refl, axis=1).astype(np.float64)
    u = np.concatenate(units, axis=1)
    scaling: list[BandScaling] = []
    r2s: list[float] = []
    for i, band in enumerate(bands):
        keep = (u[i] > 0) & (u[i] < 255)
        a, b, r2 = fit_linear(r[i][keep], u[i][keep])
        scaling.append(BandScaling(band=band, scale=a, offset=b, clip_min=0.0, clip_max=255.0))
        r2s.append(r2)
    log.info(
        "fitted RGB scaling on %d pairs: %s (r2 %s)",
        len(refl),
        [(s.band, round(s.scale, 1), round(s.offset, 1)) for s in scaling],
        [round(v, 3) for v in r2s],
    )
    return ScalingFit(tuple(scaling), len(refl), tuple(r2s))
