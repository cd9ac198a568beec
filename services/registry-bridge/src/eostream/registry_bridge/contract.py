"""Checks of a model version against the inference contract (:mod:`eostream.shared.modelcard`).

Pure functions: the facts about an ONNX graph are gathered elsewhere (:mod:`.onnx_model`) and
handed in, so every rule here is tested without files or servers. The graph rules themselves are
:func:`eostream.shared.onnx_contract.graph_problems`, the check inference loads models with
(ADR 0010); this module adds the version's tags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from eostream.shared import tags
from eostream.shared.modelcard import ModelCard
from eostream.shared.onnx_contract import (
    Dim,
    OnnxFacts,
    TensorFacts,
    graph_problems,
    parse_card,
)

__all__ = [
    "Dim",
    "OnnxFacts",
    "TensorFacts",
    "check_graph",
    "check_tags",
    "missing_tags",
    "parse_card",
    "reasons_json",
]


def missing_tags(version_tags: Mapping[str, str]) -> list[str]:
    return [name for name in tags.REQUIRED_CONTRACT_TAGS if not version_tags.get(name)]


def check_tags(version_tags: Mapping[str, str]) -> tuple[ModelCard | None, list[str]]:
    """The card from the version tags, and every problem with the contract tags."""
    problems = [f"tag {name!r} is missing" for name in missing_tags(version_tags)]
    card, card_problems = parse_card(version_tags.get(tags.MODEL_CARD), f"tag {tags.MODEL_CARD}")
    if version_tags.get(tags.MODEL_CARD):
        problems += card_problems
    if card is not None:
        band_set = version_tags.get(tags.BAND_SET)
        if band_set and band_set != card.band_set:
            problems.append(f"tag band_set={band_set!r} but the model card says {card.band_set!r}")
    return card, problems


#: The graph-against-card check shared with inference's model loading.
check_graph = graph_problems


def reasons_json(reasons: list[str] | tuple[str, ...]) -> str:
    """Reasons as a tag value (MLflow tag values are limited to 8000 characters)."""
    text = json.dumps(list(reasons))
    while len(text) > 7900 and reasons:
        reasons = list(reasons)[:-1]
        text = json.dumps([*reasons, "... (truncated)"])
    return text
