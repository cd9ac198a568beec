"""The ONNX graph checked against the model contract (ADR 0004), once for every service.

Pure: the facts about a graph (names, shapes, element types, metadata) are gathered by whoever
has the graph open (the registry-bridge with ``onnx``, inference with ``onnxruntime``) and handed
in as plain values, so the bridge's gate and inference's load refuse exactly the same models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from eostream.shared.modelcard import (
    BAND_SETS,
    EUROSAT_CLASSES,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    PATCH_SIZE,
    ModelCard,
)

Dim = int | str | None  # a fixed size, a symbolic (dynamic) name, or unknown

#: onnxruntime's element type names that differ from numpy's (``tensor(float)`` is float32).
_ORT_TYPES = {"float": "float32", "double": "float64"}


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


def ort_dtype(type_name: str) -> str:
    """onnxruntime's ``tensor(float)`` -> numpy's ``float32`` (``tensor(int64)`` -> ``int64``)."""
    inner = type_name.removeprefix("tensor(").removesuffix(")")
    return _ORT_TYPES.get(inner, inner)


def parse_card(text: str | None, where: str) -> tuple[ModelCard | None, list[str]]:
    """The card in ``text``, or None and the problem (``where`` names where it was looked for)."""
    if not text:
        return None, [f"no model card in {where}"]
    try:
        return ModelCard.from_json(text), []
    except (ValidationError, ValueError) as exc:
        return None, [f"the model card in {where} is invalid: {exc}".splitlines()[0]]


def _is_dynamic(dim: Dim) -> bool:
    return dim is None or isinstance(dim, str)


def _patch_input_problems(
    shape: tuple[Dim, ...], channels: int | None, patch: int | None
) -> list[str]:
    """A patch model's input: ``[N, C, P, P]``, N dynamic."""
    patch = PATCH_SIZE if patch is None else patch
    if len(shape) != 4:
        return [f"input has rank {len(shape)}; the contract says [N, C, H, W]"]
    problems: list[str] = []
    n, c, h, w = shape
    if not _is_dynamic(n):
        problems.append(f"input batch dimension is fixed at {n}; it must be dynamic")
    if channels is not None and c != channels:
        problems.append(f"input has {c} channels; the card declares {channels} bands")
    if (h, w) != (patch, patch):
        problems.append(f"input patch is {h}x{w}; the contract says {patch}x{patch}")
    return problems


def _pixel_input_problems(shape: tuple[Dim, ...], channels: int | None) -> list[str]:
    """A pixel model's input: ``[N, C]`` band vectors, N dynamic."""
    if len(shape) != 2:
        return [f"input has rank {len(shape)}; a pixel model's contract says [N, C]"]
    problems: list[str] = []
    n, c = shape
    if not _is_dynamic(n):
        problems.append(f"input batch dimension is fixed at {n}; it must be dynamic")
    if channels is not None and c != channels:
        problems.append(f"input has {c} channels; the card declares {channels} bands")
    return problems


def _output_problems(shape: tuple[Dim, ...], n_classes: int, patch: int, task: str) -> list[str]:
    """``[N, classes]`` scores; a segmentation model's ``[N, classes, P, P]`` (one score per
    class and pixel of the window); N dynamic."""
    expected = "[N, classes, P, P]" if task == "segmentation" else "[N, classes]"
    if len(shape) != len(expected.split(",")):
        return [f"output has rank {len(shape)}; the contract says {expected}"]
    problems: list[str] = []
    if not _is_dynamic(shape[0]):
        problems.append(f"output batch dimension is fixed at {shape[0]}; must be dynamic")
    if shape[1] != n_classes:
        problems.append(f"output has {shape[1]} classes; the card declares {n_classes}")
    if task == "segmentation" and tuple(shape[2:]) != (patch, patch):
        h, w = shape[2:]
        problems.append(f"output is {h}x{w} per class; a segmentation model's is {patch}x{patch}")
    return problems


def _map_output_problems(out: TensorFacts, card: ModelCard) -> list[str]:
    """A patch model's second output (``card.map_output``): ``[N, classes, B, B]`` float32
    scores for the pixels of its window's central ``B x B`` block (``card.map_block``)."""
    if out.name != card.map_output:
        return [f"the graph's second output is {out.name!r}; the card names {card.map_output!r}"]
    block = card.map_block
    problems = [] if out.dtype == "float32" else [f"{out.name} type is {out.dtype}; not float32"]
    shape = out.shape
    if len(shape) != 4:
        return [
            *problems,
            f"{out.name} has rank {len(shape)}; the contract says [N, classes, B, B]",
        ]
    if not _is_dynamic(shape[0]):
        problems.append(f"{out.name} batch dimension is fixed at {shape[0]}; must be dynamic")
    if shape[1] != len(card.classes):
        problems.append(f"{out.name} has {shape[1]} classes; the card declares {len(card.classes)}")
    if tuple(shape[2:]) != (block, block):
        h, w = shape[2:]
        problems.append(f"{out.name} is {h}x{w} per class; the card's map_block is {block}")
    return problems


def graph_problems(facts: OnnxFacts, card: ModelCard | None) -> list[str]:
    """Every way the graph breaks the contract or its card; empty when it follows both.

    A patch model (the card's ``task``) takes ``[N, C, P, P]``, a pixel model ``[N, C]``; both
    give ``[N, classes]`` float32 scores whose softmax is the class probability (a pixel model
    exported from scikit-learn outputs log-probabilities) and nothing else: one output only, so
    skl2onnx's ``label`` output must be dropped before saving; only a patch model whose card
    names a ``map_output`` has a second one, ``[N, classes, B, B]``
    (:func:`_map_output_problems`). A segmentation model takes ``[N, C, P, P]`` and gives
    ``[N, classes, P, P]``: a score per class for every pixel.

    ``card`` is the card the graph travels with (a version's tag); the card embedded in the
    graph's metadata must exist and equal it. Without ``card`` the embedded one is used.
    """
    problems: list[str] = []
    embedded, card_problems = parse_card(
        facts.metadata.get(METADATA_KEY), f"the ONNX metadata ({METADATA_KEY})"
    )
    problems += card_problems
    if card is not None and embedded is not None and embedded != card:
        problems.append("the model card in the ONNX metadata differs from the version's tag")
    card = card or embedded

    if len(facts.inputs) != 1:
        problems.append(f"the graph has {len(facts.inputs)} inputs; exactly 1 is expected")
    n_outputs = 2 if card is not None and card.map_output else 1
    if len(facts.outputs) != n_outputs:
        problems.append(
            f"the graph has {len(facts.outputs)} outputs; exactly {n_outputs} "
            f"{'is' if n_outputs == 1 else 'are'} expected"
        )
    if not facts.inputs or not facts.outputs:
        return problems
    if card is not None and card.map_output and len(facts.outputs) == 2:
        problems += _map_output_problems(facts.outputs[1], card)

    inp, out = facts.inputs[0], facts.outputs[0]
    expected_in = card.input_name if card else INPUT_NAME
    expected_out = card.output_name if card else OUTPUT_NAME
    if inp.name != expected_in:
        problems.append(f"the graph has no input {expected_in!r}: its input is named {inp.name!r}")
    if out.name != expected_out:
        problems.append(
            f"the graph has no output {expected_out!r}: its output is named {out.name!r}"
        )
    if inp.dtype != "float32":
        problems.append(f"input type is {inp.dtype}; the contract says float32")
    if out.dtype != "float32":
        problems.append(f"output type is {out.dtype}; the contract says float32")

    channels = len(card.bands) if card else None
    task = card.task if card else "patch"
    patch = card.patch_size if card else None
    if task == "pixel":
        problems += _pixel_input_problems(inp.shape, channels)
    else:
        problems += _patch_input_problems(inp.shape, channels, patch)
    n_classes = len(card.classes) if card else len(EUROSAT_CLASSES)
    problems += _output_problems(out.shape, n_classes, PATCH_SIZE if patch is None else patch, task)

    if card is not None:
        expected_bands = BAND_SETS.get(card.band_set)
        if expected_bands is not None and card.bands != expected_bands:
            problems.append(
                f"card bands {list(card.bands)} are not the {card.band_set} order "
                f"{list(expected_bands)}"
            )
        # any class list (a chip dataset's own): named, distinct; the output has one per class
        if not card.classes or len(set(card.classes)) != len(card.classes):
            problems.append("card classes must be a non-empty list of distinct names")
        elif any(not str(c).strip() for c in card.classes):
            problems.append("card classes must not be blank")
    return problems
