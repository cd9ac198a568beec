"""The promotion gate: a pure decision from two evaluations and the thresholds.

A candidate passes when

* its accuracy on the fixed held-out set reaches ``min_accuracy``;
* with a champion: its accuracy reaches the champion's plus ``min_improvement``, and no class's
  recall falls more than ``max_class_drop`` below the champion's recall for that class.

Every check yields one human-readable reason, passed or not, so the verdict explains itself in
the version's tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from eostream.shared import tags


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on the held-out set."""

    accuracy: float
    per_class_recall: Mapping[str, float]
    samples: int
    dataset_digest: str = ""


@dataclass(frozen=True)
class Thresholds:
    min_accuracy: float = 0.5
    max_class_drop: float = 0.10
    min_improvement: float = 0.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(r for r in self.reasons if r.startswith("FAIL"))


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
        candidate.accuracy >= thresholds.min_accuracy,
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
        candidate.accuracy >= needed,
        f"accuracy {candidate.accuracy:.4f} vs champion {champion.accuracy:.4f}"
        f" + {thresholds.min_improvement:.4f}",
    )
    drops = {
        name: champion_recall - candidate.per_class_recall.get(name, 0.0)
        for name, champion_recall in champion.per_class_recall.items()
    }
    too_far = {name: drop for name, drop in drops.items() if drop > thresholds.max_class_drop}
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


def champion_refusal(gate: str | None, overridden: bool) -> str | None:
    """Pure: None when a version with gate verdict ``gate`` (the ``eostream.gate`` tag) may be
    champion, else why not. The alias guard asks this of a champion alias moved in MLflow.

    A passed verdict may; a failed one only with a credentialed force promotion on record
    (``overridden``); a refused version (contract broken) or one not gated yet never.
    """
    if gate == tags.GATE_PASSED:
        return None
    if gate == tags.GATE_FAILED:
        if overridden:
            return None
        return (
            "it failed the promotion gate and no force promotion is on record; promote it "
            "through the bridge with force to override"
        )
    if gate == tags.GATE_REFUSED:
        return "it was refused by the gate (contract or verification) and can never ship"
    return "it has no gate verdict yet; the bridge gates it first, then promote it if it passes"
