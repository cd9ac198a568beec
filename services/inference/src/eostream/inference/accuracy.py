"""Map accuracy, pure: confusion matrices, per-class scores, and the NDWI water baseline.

No I/O here: arrays in, numbers out, so the figures can be checked by hand on tiny examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Labels = npt.NDArray[np.integer[Any]]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ClassScores:
    """Scores of one class; None where the denominator is zero (undefined, not zero)."""

    precision: float | None
    recall: float | None
    f1: float | None
    iou: float | None
    support: int  # reference pixels of the class
    predicted: int  # pixels predicted as the class

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def confusion_matrix(truth: Labels, predicted: Labels, n_classes: int, valid: Mask) -> np.ndarray:
    """``[n, n]`` pixel counts over ``valid``: rows are reference classes, columns predictions."""
    if truth.shape != predicted.shape or truth.shape != valid.shape:
        raise ValueError(
            f"shapes differ: truth {truth.shape}, prediction {predicted.shape}, mask {valid.shape}"
        )
    t = truth[valid].astype(np.int64)
    p = predicted[valid].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= n_classes or p.min() < 0 or p.max() >= n_classes):
        raise ValueError(f"class indices outside 0..{n_classes - 1}")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def class_scores(cm: np.ndarray, index: int) -> ClassScores:
    tp = float(cm[index, index])
    support = float(cm[index, :].sum())
    predicted = float(cm[:, index].sum())
    fp, fn = predicted - tp, support - tp
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    iou = _ratio(tp, tp + fp + fn)
    return ClassScores(precision, recall, f1, iou, int(support), int(predicted))


def scores(cm: np.ndarray, classes: list[str]) -> dict[str, ClassScores]:
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"a {cm.shape} matrix for {len(classes)} classes")
    return {name: class_scores(cm, i) for i, name in enumerate(classes)}


def overall_accuracy(cm: np.ndarray) -> float | None:
    return _ratio(float(np.trace(cm)), float(cm.sum()))


def ndwi(green: npt.NDArray[np.floating[Any]], nir: npt.NDArray[np.floating[Any]]) -> np.ndarray:
    """McFeeters' NDWI = (green - NIR) / (green + NIR); NaN where both are zero or invalid."""
    g = green.astype(np.float64)
    n = nir.astype(np.float64)
    total = g + n
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(total != 0, (g - n) / total, np.nan)
    return np.asarray(out)


#: NDWI thresholds a tuned baseline chooses from: -0.5 .. 0.5 in steps of 0.02
NDWI_THRESHOLDS = tuple(round(-0.5 + 0.02 * i, 2) for i in range(51))


def ndwi_sweep(
    truth: Labels,
    index: np.ndarray,
    water: int,
    background: int,
    n_classes: int,
    valid: Mask,
    thresholds: tuple[float, ...] = NDWI_THRESHOLDS,
) -> dict[float, np.ndarray]:
    """The confusion matrix of NDWI > t (water, else ``background``) over ``valid``, for every
    ``t`` in ``thresholds``: what a baseline tuned on labelled dates chooses from
    (:func:`best_threshold`)."""
    out = {}
    finite = np.nan_to_num(index, nan=-np.inf)
    for t in thresholds:
        baseline = np.where(finite > t, water, background).astype(np.int16)
        out[t] = confusion_matrix(truth, baseline, n_classes, valid)
    return out


def best_threshold(sweeps: list[dict[float, np.ndarray]], water: int) -> float | None:
    """The threshold of the highest water IoU pooled over ``sweeps`` (each a
    :func:`ndwi_sweep`; the lowest such threshold on a tie), or None without any."""
    if not sweeps:
        return None
    best: tuple[float, float] | None = None
    for t in sweeps[0]:
        iou = class_scores(np.sum([s[t] for s in sweeps], axis=0), water).iou
        if iou is not None and (best is None or iou > best[1]):
            best = (t, iou)
    return None if best is None else best[0]


def ndwi_water(
    green: npt.NDArray[np.floating[Any]],
    nir: npt.NDArray[np.floating[Any]],
    threshold: float = 0.0,
) -> tuple[Mask, Mask]:
    """(water, defined): NDWI > threshold, and where NDWI could be computed at all."""
    index = ndwi(green, nir)
    defined = np.isfinite(index)
    return np.asarray(defined & (np.nan_to_num(index, nan=-np.inf) > threshold)), defined
