"""Processing-level policy (pure): what to do when a scene's level is not the model's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eostream.inference.errors import BandMismatchError, LevelMismatchError
from eostream.shared.sentinel2 import processing_level

Policy = Literal["adapt", "refuse"]


def scene_level(properties: Mapping[str, Any], collection: str | None) -> str | None:
    """L1C or L2A from the item's properties or collection name; None when it does not say.

    The rule is :func:`eostream.shared.sentinel2.processing_level` (the one ingest uses); prefer
    calling it with the whole item, whose id is a clue too.
    """
    return processing_level({"properties": properties, "collection": collection})


@dataclass(frozen=True)
class LevelDecision:
    model_level: str
    scene_level: str | None
    policy: Policy
    adapted: bool
    notes: tuple[str, ...] = field(default_factory=tuple)
    fill_bands: tuple[str, ...] = ()

    def properties(self) -> dict[str, Any]:
        return {
            "eostream:model_processing_level": self.model_level,
            "eostream:scene_processing_level": self.scene_level,
            "eostream:level_mismatch": (
                "none"
                if not self.adapted
                else f"{self.policy}: {self.scene_level} scene, {self.model_level} model"
            ),
            "eostream:level_mismatch_policy": self.policy,
            "eostream:adaptations": list(self.notes),
        }


def decide(
    model_level: str, level: str | None, policy: Policy, missing_bands: list[str]
) -> LevelDecision:
    """Accept, adapt (with notes saying how) or refuse; refuse unknown missing bands always."""
    mismatch = level is not None and level != model_level
    if mismatch and policy == "refuse":
        raise LevelMismatchError(
            f"the scene is {level} but the model was trained on {model_level}; the policy "
            "INFERENCE_LEVEL_MISMATCH=refuse forbids adapting it"
        )
    fillable = {"B10"} if (mismatch and level == "L2A") else set()
    unfillable = [b for b in missing_bands if b not in fillable]
    if unfillable:
        raise BandMismatchError(
            f"the scene has no asset for band(s) {', '.join(unfillable)} that the model needs"
        )
    notes: list[str] = []
    if mismatch:
        notes.append(
            f"{level} surface reflectance used in place of {model_level} top-of-atmosphere "
            "reflectance (no atmospheric (de)correction)"
        )
    fill = tuple(b for b in missing_bands if b in fillable)
    for band in fill:
        notes.append(f"{band} is absent from {level} products; filled with a constant reflectance")
    return LevelDecision(model_level, level, policy, mismatch, tuple(notes), fill)
