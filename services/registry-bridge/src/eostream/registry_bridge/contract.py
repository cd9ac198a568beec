"""Checks of a model version against the inference contract (:mod:`eostream.shared.modelcard`).

Pure functions: the facts about an ONNX graph are gathered elsewhere (:mod:`.onnx_model`) and
handed in, so every rule here is tested without files or servers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from eostream.registry_bridge import tags
from eostream.shared.modelcard import (
    BAND_SETS,
    EUROSAT_CLASSES,
    INPUT_NAME,
    OUTPUT_NAME,
    PATCH_SIZE,
    ModelCard,
)

Dim = int | str | None  # a fixed size, a symbolic (dynamic) name, or unknown


@dataclass(frozen=True)
class TensorFacts:
    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy name, e.g. "float32"


@dataclass(frozen=True)
class OnnxFacts:
    inputs: tuple[TensorFacts, ...]
    outputs: tuple[TensorFacts, ...]
    metadata: Mapping[str, str]


def parse_card(text: str | None, where: str) -> tuple[ModelCard | None, list[str]]:
    if not text:
        return None, [f"no model card in {where}"]
    try:
        return ModelCard.from_json(text), []
    except (ValidationError, ValueError) as exc:
        return None, [f"the model card in {where} is invalid: {exc}".splitlines()[0]]


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


def _is_dynamic(dim: Dim) -> bool:
    return dim is None or isinstance(dim, str)


def check_graph(facts: OnnxFacts, card: ModelCard | None) -> list[str]:
    """Every way the graph breaks the contract; empty when it follows it."""
    problems: list[str] = []
    embedded, card_problems = parse_card(
        facts.metadata.get("eostream.model_card"), "the ONNX metadata (eostream.model_card)"
    )
    problems += card_problems
    if card is not None and embedded is not None and embedded != card:
        problems.append("the model card in the ONNX metadata differs from the version's tag")
    card = card or embedded

    if len(facts.inputs) != 1:
        problems.append(f"the graph has {len(facts.inputs)} inputs; exactly 1 is expected")
    if len(facts.outputs) != 1:
        problems.append(f"the graph has {len(facts.outputs)} outputs; exactly 1 is expected")
    if not facts.inputs or not facts.outputs:
        return problems

    inp, out = facts.inputs[0], facts.outputs[0]
    expected_in = card.input_name if card else INPUT_NAME
    expected_out = card.output_name if card else OUTPUT_NAME
    if inp.name != expected_in:
        problems.append(f"input is named {inp.name!r}; the contract says {expected_in!r}")
    if out.name != expected_out:
        problems.append(f"output is named {out.name!r}; the contract says {expected_out!r}")
    if inp.dtype != "float32":
        problems.append(f"input type is {inp.dtype}; the contract says float32")
    if out.dtype != "float32":
        problems.append(f"output type is {out.dtype}; the contract says float32")

    channels = len(card.bands) if card else None
    patch = card.patch_size if card else PATCH_SIZE
    if len(inp.shape) != 4:
        problems.append(f"input has rank {len(inp.shape)}; the contract says [N, C, H, W]")
    else:
        n, c, h, w = inp.shape
        if not _is_dynamic(n):
            problems.append(f"input batch dimension is fixed at {n}; it must be dynamic")
        if channels is not None and c != channels:
            problems.append(f"input has {c} channels; the card declares {channels} bands")
        if (h, w) != (patch, patch):
            problems.append(f"input patch is {h}x{w}; the contract says {patch}x{patch}")
    n_classes = len(card.classes) if card else len(EUROSAT_CLASSES)
    if len(out.shape) != 2:
        problems.append(f"output has rank {len(out.shape)}; the contract says [N, classes]")
    else:
        if not _is_dynamic(out.shape[0]):
            problems.append(f"output batch dimension is fixed at {out.shape[0]}; must be dynamic")
        if out.shape[1] != n_classes:
            problems.append(f"output has {out.shape[1]} classes; the card declares {n_classes}")

    if card is not None:
        expected_bands = BAND_SETS.get(card.band_set)
        if expected_bands is not None and card.bands != expected_bands:
            problems.append(
                f"card bands {list(card.bands)} are not the {card.band_set} order "
                f"{list(expected_bands)}"
            )
        if tuple(card.classes) != EUROSAT_CLASSES:
            problems.append("card classes are not the EuroSAT classes in contract order")
    return problems


def reasons_json(reasons: list[str] | tuple[str, ...]) -> str:
    """Reasons as a tag value (MLflow tag values are limited to 8000 characters)."""
    text = json.dumps(list(reasons))
    while len(text) > 7900 and reasons:
        reasons = list(reasons)[:-1]
        text = json.dumps([*reasons, "... (truncated)"])
    return text
