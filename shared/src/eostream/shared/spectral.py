"""Spectral indices a pixel model sees beside its bands: one definition for every service.

A per-pixel model exported from scikit-learn takes the card's raw bands (``[N, C]`` in card
units); the indices are computed inside its ONNX graph (the trainer builds that graph from
:data:`INDICES`), so inference feeds bands only. The scikit-learn estimator registered in MLflow
is fitted on :func:`index_features` (bands, then the indices), which the registry-bridge uses to
check the ONNX export against the estimator. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: (name, a, b): the normalised difference ``(a - b) / (a + b + EPSILON)`` of two bands.
INDICES: tuple[tuple[str, str, str], ...] = (
    ("NDWI", "B03", "B08"),  # McFeeters: open water > 0
    ("MNDWI", "B03", "B11"),  # Xu: water against built-up and soil
    ("NDVI", "B08", "B04"),
    ("NDBI", "B11", "B08"),
)
EPSILON = 1e-6


def indices_for(bands: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """The indices ``bands`` allow, as (name, column of a, column of b)."""
    where = {b: i for i, b in enumerate(bands)}
    return tuple((name, where[a], where[b]) for name, a, b in INDICES if a in where and b in where)


def feature_names(bands: Sequence[str], *, with_bands: bool = True) -> tuple[str, ...]:
    names = tuple(name for name, _, _ in indices_for(bands))
    return (*bands, *names) if with_bands else names


def index_features(
    x: npt.NDArray[np.float32], bands: Sequence[str], *, with_bands: bool = True
) -> npt.NDArray[np.float32]:
    """``[N, C]`` band vectors -> ``[N, C + k]``: the bands, then the indices ``bands`` allow,
    computed in float32 exactly as the exported graph computes them. ``with_bands=False``: the
    ``k`` indices alone (ratios: they carry over between dates better than reflectance does)."""
    x = np.asarray(x, np.float32)
    columns = [x] if with_bands else []
    for _, a, b in indices_for(bands):
        num = x[:, a] - x[:, b]
        den = x[:, a] + x[:, b] + np.float32(EPSILON)
        columns.append((num / den)[:, None])
    if not columns:
        raise ValueError(f"bands {tuple(bands)} allow no spectral index")
    return np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=np.float32)
