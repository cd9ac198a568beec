"""Per-pixel models from the user's own labels: pixels under the chips' masks, a threshold chosen
on the held-out pixels.

A chip dataset cut from label items (:mod:`eostream.inference.chips`) keeps, beside each chip,
its mask: every pixel's class (255: unknown, cloud or nodata). A per-pixel model learns from
those pixels directly (no window: true 10 m maps, no blur at the reservoir's edge), from the
train split only; the spatial split keeps val and test pixels away from training ones.

Two choices measured on the Boadella water labels (``benchmarks/maps/bench_own_labels.py``,
leave one date out) are the defaults here:

- the spectral indices alone (NDWI, MNDWI, NDVI, NDBI), not the raw bands: band ratios carry over
  between dates, reflectance does not (water IoU 0.914 / 0.921 / 0.897 with the bands, 0.942 /
  0.931 / 0.918 without, on dates the model never saw);
- with two classes, the decision threshold of the rarer class baked into the exported graph
  (:meth:`PixelModel.with_threshold`), chosen where it must hold: on dates the model did not see.
  With training chips of two or more dates, by leave-one-date-out over them (fit on the other
  dates' pixels, score this date's; the mean IoU of the class), as the benchmark's inner
  cross-validation chose it; with one date, on the val chips' pixels (best IoU of the class).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from eostream.shared.spectral import indices_for
from eostream.trainer.datasets import UNKNOWN
from eostream.trainer.errors import DatasetError
from eostream.trainer.pixel import PixelModel

log = logging.getLogger(__name__)

#: thresholds tried for the rarer class's probability
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05))


@dataclass(frozen=True)
class Threshold:
    cls: int
    threshold: float
    iou: float  # the class's IoU on the val pixels at that threshold
    iou_at_half: float  # ... at 0.5 (the estimator's own argmax)
    chosen_on: str = "val"  # "val": the val pixels; "dates": leave one date out


def mask_pixels(
    x: npt.NDArray[np.float32],
    masks: npt.NDArray[np.uint8],
    *,
    max_pixels: int,
    seed: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The labelled pixels of chips ``x`` ``[n, C, s, s]`` under ``masks`` ``[n, s, s]`` as
    ``([m, C], [m])``; at most ``max_pixels``, drawn at random (every class keeps its share).
    A pixel repeated in two overlapping chips counts twice; no matter for a tree ensemble."""
    n, c = x.shape[:2]
    if masks.shape != (n, *x.shape[2:]):
        raise DatasetError(f"chips {x.shape} and masks {masks.shape} do not match")
    pixels = np.ascontiguousarray(x.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c))
    labels = masks.reshape(-1)
    keep = np.flatnonzero(labels != UNKNOWN)
    if len(keep) == 0:
        raise DatasetError("the chips' masks hold no labelled pixel")
    if len(keep) > max_pixels:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_pixels, replace=False))
    return pixels[keep].astype(np.float32), labels[keep].astype(np.int64)


def uses_bands(bands: tuple[str, ...], indices_only: bool) -> bool:
    """Whether the estimator takes the bands too: always when no index can be computed from
    ``bands`` (RGB has no near infrared)."""
    return not (indices_only and indices_for(bands))


def iou(truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], cls: int) -> float:
    t, p = truth == cls, predicted == cls
    union = int((t | p).sum())
    return float((t & p).sum() / union) if union else 0.0


def choose_threshold(
    model: PixelModel, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], cls: int
) -> Threshold:
    """The threshold on class ``cls``'s probability with the best IoU of ``cls`` on the pixels
    ``x``, ``y`` (two classes; ties go to the threshold nearest 0.5)."""
    if len(model.classes) != 2:
        raise DatasetError("a decision threshold is chosen for two classes only")
    p = model.probabilities(x)[:, cls]
    other = 1 - cls
    scored = {t: iou(y, np.where(p > t, cls, other).astype(np.int64), cls) for t in THRESHOLDS}
    best = max(THRESHOLDS, key=lambda t: (round(scored[t], 6), -abs(t - 0.5)))
    return Threshold(cls, best, scored[best], iou(y, np.where(p > 0.5, cls, other), cls))


def rarer_class(y: npt.NDArray[np.int64], classes: int) -> int:
    counts = np.bincount(y, minlength=classes)
    return int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))


def pixel_ious(
    model: PixelModel, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> dict[str, float]:
    """Per-class IoU of the model's per-pixel decisions (its log_shift included)."""
    predicted = model.logits(x).argmax(axis=1)
    return {name: iou(y, predicted, i) for i, name in enumerate(model.classes)}


def threshold_across_dates(
    dates: Mapping[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]],
    fit: Callable[[npt.NDArray[np.float32], npt.NDArray[np.int64]], PixelModel],
    cls: int,
) -> Threshold | None:
    """The threshold on class ``cls``'s probability with the best mean IoU of ``cls`` over the
    dates, each scored by a model ``fit`` on the other dates' pixels (two classes). None when
    fewer than two dates hold the class and a training set with every class."""
    per_threshold: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    for date, (x, y) in dates.items():
        rest = [v for k, v in dates.items() if k != date]
        if not rest or not (y == cls).any():
            continue
        y_rest = np.concatenate([r[1] for r in rest])
        if len(np.unique(y_rest)) < 2:
            continue
        model = fit(np.concatenate([r[0] for r in rest]), y_rest)
        p = model.probabilities(x)[:, cls]
        for t in THRESHOLDS:
            per_threshold[t].append(iou(y, np.where(p > t, cls, 1 - cls).astype(np.int64), cls))
    if len(per_threshold[0.5]) < 2:
        return None
    mean = {t: float(np.mean(v)) for t, v in per_threshold.items()}
    best = max(THRESHOLDS, key=lambda t: (round(mean[t], 6), -abs(t - 0.5)))
    log.info(
        "threshold by leave-one-date-out over %d dates: %.2f (mean IoU %.3f; %.3f at 0.5)",
        len(per_threshold[0.5]), best, mean[best], mean[0.5],
    )  # fmt: skip
    return Threshold(cls, best, mean[best], mean[0.5], chosen_on="dates")
