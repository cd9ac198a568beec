"""Knowing what the model does not know: per-window confidence and an out-of-domain distance.

Softmax is overconfident far from the training data (a Saharan tile comes out as confident
AnnualCrop or Industrial), so a second signal compares each window's band means, in model
units, with the distribution of the training patches' band means stored on the model card
(:class:`~eostream.shared.modelcard.InputReference`): a Mahalanobis distance, in units of the
99th percentile of the training patches' own distances. Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from eostream.shared.modelcard import InputReference

#: Windows whose distance exceeds this many times the training patches' 99th percentile are out
#: of the training domain.
DEFAULT_DISTANCE_LIMIT = 1.5


def band_means(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """``[N, C, H, W]`` -> ``[N, C]`` per-window band means; a pixel model's ``[N, C]`` band
    vectors are their own means (its reference is the distribution of training pixels)."""
    if batch.ndim == 2:
        return np.asarray(batch, np.float64)
    return np.asarray(batch.mean(axis=(2, 3), dtype=np.float64))


def _inverse(cov: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    ridge = 1e-6 * max(float(np.trace(cov)) / len(cov), 1e-12)
    return np.asarray(np.linalg.inv(cov + ridge * np.eye(len(cov))))


def _distances(
    means: npt.NDArray[np.float64], centre: npt.NDArray[np.float64], inv: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    d = means - centre
    return np.asarray(np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, inv, d), 0.0)), np.float64)


def input_reference(inputs: npt.NDArray[np.float32], source: str = "") -> InputReference:
    """The card's reference from the training inputs ``[N, C, H, W]`` (a pixel model's
    ``[N, C]`` pixels) in model units."""
    means = band_means(inputs)
    centre = means.mean(axis=0)
    cov = np.atleast_2d(np.cov(means, rowvar=False))
    p99 = float(np.percentile(_distances(means, centre, _inverse(cov)), 99))
    return InputReference(
        patches=len(means),
        mean=tuple(float(v) for v in centre),
        covariance=tuple(tuple(float(v) for v in row) for row in cov),
        distance_p99=max(p99, 1e-9),
        source=source,
    )


@dataclass(frozen=True)
class DomainCheck:
    """Scores windows against a card's reference: distance / (training 99th percentile)."""

    reference: InputReference
    limit: float = DEFAULT_DISTANCE_LIMIT
    _centre: npt.NDArray[np.float64] = field(init=False, repr=False)
    _inv: npt.NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cov = np.asarray(self.reference.covariance, np.float64)
        object.__setattr__(self, "_centre", np.asarray(self.reference.mean, np.float64))
        object.__setattr__(self, "_inv", _inverse(cov))

    def scores(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``[N, C, H, W]`` (or ``[N, C]`` pixels) -> ``[N]``: 1.0 is the training inputs' 99th
        percentile."""
        d = _distances(band_means(batch), self._centre, self._inv)
        return (d / self.reference.distance_p99).astype(np.float32)


@dataclass(frozen=True)
class SceneConfidence:
    """The scene-level figures of both signals, and which of them flagged the scene."""

    mean_confidence: float | None
    uncertain_share: float
    low_confidence_share: float
    out_of_domain_share: float | None
    median_domain_score: float | None
    threshold: float
    domain_limit: float | None

    def flagged_by(self, share: float = 0.5) -> list[str]:
        """A signal flags the scene when it marks more than ``share`` of the valid pixels."""
        flags = []
        if self.low_confidence_share > share:
            flags.append("confidence")
        if self.out_of_domain_share is not None and self.out_of_domain_share > share:
            flags.append("input_statistics")
        return flags

    def properties(self) -> dict[str, Any]:
        """The result item's properties."""
        flags = self.flagged_by()
        return {
            "eostream:mean_confidence": self.mean_confidence,
            "eostream:uncertain_share": self.uncertain_share,
            "eostream:uncertain_below": self.threshold,
            "eostream:out_of_domain": {
                "flagged": bool(flags),
                "flagged_by": flags,
                "low_confidence_share": self.low_confidence_share,
                "input_statistics": (
                    None
                    if self.out_of_domain_share is None
                    else {
                        "out_of_domain_share": self.out_of_domain_share,
                        "median_score": self.median_domain_score,
                        "limit": self.domain_limit,
                        "score": "Mahalanobis distance of window band means / training p99",
                    }
                ),
            },
        }
