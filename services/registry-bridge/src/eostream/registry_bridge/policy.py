"""The promotion gate: a pure decision from two evaluations and the thresholds.

A candidate passes when

* its accuracy on the fixed held-out set reaches ``min_accuracy``;
* with a champion: its accuracy reaches the champion's plus ``min_improvement``, and no class's
  recall falls more than ``max_class_drop`` below the champion's recall for that class.

With a reference set configured (``BRIDGE_GATE__REFERENCE``) :func:`judge_map` adds the map
check: the candidate's map figure on the reference scenes (mean IoU of the reference classes, or
overall accuracy) must not fall more than ``map_margin`` below the champion's, and must reach
``map_floor`` when one is set. Patch accuracy does not predict map accuracy
(docs/maps-accuracy.md), so a candidate better on EuroSAT patches can still fail here.

Every check yields one human-readable reason, passed or not, so the verdict explains itself in
the version's tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from eostream.shared import tags

if TYPE_CHECKING:
    from eostream.registry_bridge.settings import GateSettings

MapMetric = Literal["mean_iou", "overall_accuracy"]


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on the held-out set."""

    accuracy: float
    per_class_recall: Mapping[str, float]
    samples: int
    dataset_digest: str = ""


@dataclass(frozen=True)
class MapScores:
    """A model's maps scored on the reference set (pooled over its completely labelled items).

    None where nothing could be scored; ``errors`` holds one line per item (or for the whole
    set) that could not be evaluated.
    """

    mean_iou: float | None
    overall_accuracy: float | None
    items: int = 0
    errors: tuple[str, ...] = ()
    #: the NDWI > 0 baseline's water IoU on the same pixels (None: no water class, or not read)
    ndwi_iou: float | None = None
    #: the completely labelled items the figures are pooled over (their ids)
    scored: tuple[str, ...] = ()
    #: the reference set's labels collection (its id)
    reference: str | None = None

    def figure(self, metric: MapMetric) -> float | None:
        return self.mean_iou if metric == "mean_iou" else self.overall_accuracy


@dataclass(frozen=True)
class Thresholds:
    min_accuracy: float = 0.5
    max_class_drop: float = 0.10
    min_improvement: float = 0.0
    map_metric: MapMetric = "mean_iou"
    map_margin: float = 0.02
    map_floor: float | None = None

    @classmethod
    def of(cls, gate: GateSettings) -> Thresholds:
        return cls(
            min_accuracy=gate.min_accuracy,
            max_class_drop=gate.max_class_drop,
            min_improvement=gate.min_improvement,
            map_metric=gate.map_metric,
            map_margin=gate.map_margin,
            map_floor=gate.map_floor,
        )


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(r for r in self.reasons if r.startswith("FAIL"))


#: scores and thresholds are decimal fractions that binary floating point rounds (0.82 - 0.80 is
#: 0.01999...): a comparison counts a difference this small as none, so a candidate exactly at
#: a threshold passes, as the thresholds' descriptions say
TOLERANCE = 1e-9


def judge(candidate: Evaluation, champion: Evaluation | None, thresholds: Thresholds) -> Verdict:
    """Decide whether ``candidate`` may replace ``champion`` (None: there is no champion yet)."""
    reasons: list[str] = []
    ok = True

    def check(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        reasons.append(("PASS: " if passed else "FAIL: ") + text)

    if candidate.samples <= 0:
        return Verdict(False, ("FAIL: the held-out set is empty; nothing was evaluated",))

    check(
        candidate.accuracy >= thresholds.min_accuracy - TOLERANCE,
        f"accuracy {candidate.accuracy:.4f} vs minimum {thresholds.min_accuracy:.4f}",
    )
    if champion is None:
        reasons.append("PASS: no champion yet; nothing to compare with")
        return Verdict(ok, tuple(reasons))

    if (
        champion.dataset_digest
        and candidate.dataset_digest
        and (champion.dataset_digest != candidate.dataset_digest)
    ):
        reasons.append("NOTE: champion and candidate were evaluated on different held-out sets")

    needed = champion.accuracy + thresholds.min_improvement
    check(
        candidate.accuracy >= needed - TOLERANCE,
        f"accuracy {candidate.accuracy:.4f} vs champion {champion.accuracy:.4f}"
        f" + {thresholds.min_improvement:.4f}",
    )
    drops = {
        name: champion_recall - candidate.per_class_recall.get(name, 0.0)
        for name, champion_recall in champion.per_class_recall.items()
    }
    too_far = {
        name: drop for name, drop in drops.items() if drop > thresholds.max_class_drop + TOLERANCE
    }
    for name, drop in sorted(too_far.items()):
        check(
            False,
            f"class {name} recall fell by {drop:.4f} "
            f"({champion.per_class_recall[name]:.4f} -> "
            f"{candidate.per_class_recall.get(name, 0.0):.4f}); at most "
            f"{thresholds.max_class_drop:.4f} allowed",
        )
    if not too_far:
        worst = max(drops.values(), default=0.0)
        check(
            True,
            f"no class recall fell more than {thresholds.max_class_drop:.4f} "
            f"(largest drop {worst:.4f})",
        )
    return Verdict(ok, tuple(reasons))


def judge_map(candidate: MapScores, champion: MapScores | None, thresholds: Thresholds) -> Verdict:
    """The map check: ``candidate``'s figure vs ``champion``'s (None: no champion, or its maps
    could not be scored) less ``map_margin``, and vs ``map_floor``."""
    metric = thresholds.map_metric
    figure = candidate.figure(metric)
    if figure is None:
        why = "; ".join(candidate.errors) or "no completely labelled item"
        text = f"FAIL: map {metric} could not be scored on the reference set: {why}"
        return Verdict(False, (text,))
    reasons: list[str] = []
    ok = True

    def check(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        reasons.append(("PASS: " if passed else "FAIL: ") + text)

    if thresholds.map_floor is not None:
        check(
            figure >= thresholds.map_floor - TOLERANCE,
            f"map {metric} {figure:.4f} vs minimum {thresholds.map_floor:.4f}",
        )
    theirs = champion.figure(metric) if champion is not None else None
    if theirs is None:
        reasons.append(
            f"PASS: map {metric} {figure:.4f} recorded; no champion map figure to compare with"
        )
    else:
        check(
            figure >= theirs - thresholds.map_margin - TOLERANCE,
            f"map {metric} {figure:.4f} vs champion {theirs:.4f} - margin "
            f"{thresholds.map_margin:.4f}",
        )
    if candidate.errors:
        reasons.append(
            f"NOTE: {len(candidate.errors)} reference item(s) not scored: "
            + "; ".join(candidate.errors)
        )
    return Verdict(ok, tuple(reasons))


def combine(*verdicts: Verdict) -> Verdict:
    """One verdict from several checks: passed when all passed, every reason kept."""
    return Verdict(all(v.passed for v in verdicts), tuple(r for v in verdicts for r in v.reasons))


def champion_refusal(gate: str | None, overridden: bool) -> str | None:
    """Pure: None when a version with gate verdict ``gate`` (the ``eostream.gate`` tag) may be
    champion, else why not. The alias guard asks this of a champion alias moved in MLflow.

    A passed verdict may; a failed one only with a credentialed force promotion in force
    (``overridden``: on record, and the champion not moved on since); a refused version
    (contract broken) or one not gated yet never.
    """
    if gate == tags.GATE_PASSED:
        return None
    if gate == tags.GATE_FAILED:
        if overridden:
            return None
        return (
            "it failed the promotion gate and no force promotion of it is in force (a force "
            "ends when the champion moves on); promote it through the bridge with force to "
            "override"
        )
    if gate == tags.GATE_REFUSED:
        return "it was refused by the gate (contract or verification) and can never ship"
    return "it has no gate verdict yet; the bridge gates it first, then promote it if it passes"
