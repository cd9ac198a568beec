"""The graph-against-card check the registry-bridge gates with and inference loads with."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eostream.shared.modelcard import BAND_SETS, METADATA_KEY, BandScaling, ModelCard
from eostream.shared.onnx_contract import OnnxFacts, TensorFacts, graph_problems, ort_dtype

CARD = ModelCard(
    name="m",
    band_set="rgb",
    bands=BAND_SETS["rgb"],
    scaling=tuple(BandScaling(band=b, scale=1.0) for b in BAND_SETS["rgb"]),
)


def _facts(
    *, name: str = "input", shape: tuple[int | str | None, ...] = ("N", 3, 64, 64)
) -> OnnxFacts:
    return OnnxFacts(
        inputs=(TensorFacts(name, shape, "float32"),),
        outputs=(TensorFacts("logits", ("N", 10), "float32"),),
        metadata={METADATA_KEY: CARD.to_json()},
    )


def test_a_graph_that_follows_its_card_has_no_problem() -> None:
    assert graph_problems(_facts(), CARD) == []
    assert graph_problems(_facts(), None) == []  # the embedded card is used


def test_every_break_is_named() -> None:
    problems = graph_problems(_facts(name="x", shape=(2, 4, 64, 64)), CARD)
    assert any("no input 'input'" in p and "input is named 'x'" in p for p in problems)
    assert any("batch dimension is fixed at 2" in p for p in problems)
    assert any("4 channels; the card declares 3 bands" in p for p in problems)


def test_a_card_must_name_a_patch_size_a_model_can_take() -> None:
    """0 used to pass as "the default" (64) while inference fed the model 0 x 0 windows."""
    for size in (0, -64):
        with pytest.raises(ValidationError, match="patch_size"):
            CARD.model_validate({**CARD.model_dump(), "patch_size": size})


def test_the_embedded_card_must_be_there_and_agree() -> None:
    bare = OnnxFacts(_facts().inputs, _facts().outputs, {})
    assert any("no model card in the ONNX metadata" in p for p in graph_problems(bare, CARD))
    other = CARD.model_copy(update={"name": "other"})
    assert any("differs from the version's tag" in p for p in graph_problems(_facts(), other))


def test_onnxruntime_type_names() -> None:
    assert [ort_dtype(t) for t in ("tensor(float)", "tensor(double)", "tensor(int64)")] == [
        "float32",
        "float64",
        "int64",
    ]


PIXEL_CARD = ModelCard(
    name="px",
    band_set="ms13",
    bands=BAND_SETS["ms13"],
    scaling=tuple(BandScaling(band=b, scale=1.0) for b in BAND_SETS["ms13"]),
    task="pixel",
    patch_size=1,
    library="scikit-learn",
)


def _pixel_facts(
    shape: tuple[int | str | None, ...] = ("N", 13), *, outputs: tuple[str, ...] = ("logits",)
) -> OnnxFacts:
    return OnnxFacts(
        inputs=(TensorFacts("input", shape, "float32"),),
        outputs=tuple(TensorFacts(o, ("N", 10), "float32") for o in outputs),
        metadata={METADATA_KEY: PIXEL_CARD.to_json()},
    )


def test_a_pixel_model_takes_band_vectors() -> None:
    assert graph_problems(_pixel_facts(), PIXEL_CARD) == []
    assert any(
        "rank 4" in p and "[N, C]" in p
        for p in graph_problems(_pixel_facts(("N", 13, 1, 1)), PIXEL_CARD)
    )
    problems = graph_problems(_pixel_facts((5, 12)), PIXEL_CARD)
    assert any("fixed at 5" in p for p in problems)
    assert any("12 channels; the card declares 13" in p for p in problems)


def test_skl2onnx_label_output_is_refused() -> None:
    """Exactly the card's one output: a graph that still has skl2onnx's ``label`` is refused."""
    problems = graph_problems(_pixel_facts(outputs=("label", "logits")), PIXEL_CARD)
    assert any("2 outputs; exactly 1" in p for p in problems)


def test_a_segmentation_model_gives_a_score_per_class_and_pixel() -> None:
    card = CARD.model_copy(
        update={"task": "segmentation", "classes": ("water", "other"), "patch_size": 32}
    )
    inputs = (TensorFacts("input", ("N", 3, 32, 32), "float32"),)

    def facts(shape: tuple[int | str | None, ...]) -> OnnxFacts:
        out = (TensorFacts("logits", shape, "float32"),)
        return OnnxFacts(inputs, out, {METADATA_KEY: card.to_json()})

    assert graph_problems(facts(("N", 2, 32, 32)), card) == []
    assert graph_problems(facts(("N", 2)), card) == [
        "output has rank 2; the contract says [N, classes, P, P]"
    ]
    problems = graph_problems(facts((4, 3, 16, 16)), card)
    assert "output batch dimension is fixed at 4; must be dynamic" in problems
    assert "output has 3 classes; the card declares 2" in problems
    assert "output is 16x16 per class; a segmentation model's is 32x32" in problems
    # a patch model's card with a per-pixel output is refused the other way round
    patch = card.model_copy(update={"task": "patch"})
    patch_facts = OnnxFacts(
        inputs, facts(("N", 2, 32, 32)).outputs, {METADATA_KEY: patch.to_json()}
    )
    assert graph_problems(patch_facts, patch) == [
        "output has rank 4; the contract says [N, classes]"
    ]


def test_any_class_list_passes_when_the_output_has_one_score_per_class() -> None:
    card = CARD.model_copy(update={"classes": ("water", "forest", "other"), "patch_size": 32})
    facts = OnnxFacts(
        inputs=(TensorFacts("input", ("N", 3, 32, 32), "float32"),),
        outputs=(TensorFacts("logits", ("N", 3), "float32"),),
        metadata={METADATA_KEY: card.to_json()},
    )
    assert graph_problems(facts, card) == []
    ten = OnnxFacts(facts.inputs, _facts().outputs, facts.metadata)
    assert "output has 10 classes; the card declares 3" in graph_problems(ten, card)
    twice = card.model_copy(update={"classes": ("water", "water", "other")})
    bad = OnnxFacts(facts.inputs, facts.outputs, {METADATA_KEY: twice.to_json()})
    assert "card classes must be a non-empty list of distinct names" in graph_problems(bad, twice)


def test_a_patch_model_may_give_per_pixel_scores_of_its_centre_as_the_card_says() -> None:
    """A card with ``map_output`` (centre_cnn's) expects a second output ``[N, classes, B, B]``
    beside the window's ``[N, classes]``; without it, a second output is refused as before."""
    card = CARD.model_copy(update={"map_output": "pixel_logits", "map_block": 32})
    inputs = (TensorFacts("input", ("N", 3, 64, 64), "float32"),)

    def facts(*outputs: TensorFacts) -> OnnxFacts:
        return OnnxFacts(inputs, outputs, {METADATA_KEY: card.to_json()})

    logits = TensorFacts("logits", ("N", 10), "float32")
    good = TensorFacts("pixel_logits", ("N", 10, 32, 32), "float32")
    assert graph_problems(facts(logits, good), card) == []
    assert graph_problems(facts(logits), card) == [
        "the graph has 1 outputs; exactly 2 are expected"
    ]
    wrong = TensorFacts("pixel_logits", (4, 9, 16, 16), "float32")
    assert graph_problems(facts(logits, wrong), card) == [
        "pixel_logits batch dimension is fixed at 4; must be dynamic",
        "pixel_logits has 9 classes; the card declares 10",
        "pixel_logits is 16x16 per class; the card's map_block is 32",
    ]
    named = TensorFacts("other", ("N", 10, 32, 32), "float32")
    assert graph_problems(facts(logits, named), card) == [
        "the graph's second output is 'other'; the card names 'pixel_logits'"
    ]
    plain = OnnxFacts(inputs, (logits, good), {METADATA_KEY: CARD.to_json()})
    assert graph_problems(plain, CARD) == ["the graph has 2 outputs; exactly 1 is expected"]


@pytest.mark.parametrize(
    "update",
    [
        {"map_output": "pixel_logits"},  # without its block
        {"map_block": 32},  # a block without an output
        {"map_output": "pixel_logits", "map_block": 66},  # bigger than the window
        {"map_output": "pixel_logits", "map_block": 31},  # not centred in 64
        {"map_output": "pixel_logits", "map_block": 32, "task": "segmentation"},
    ],
    ids=str,
)
def test_a_map_output_needs_a_centred_block_of_a_patch_model(update: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="map_"):
        ModelCard.model_validate({**CARD.model_dump(), **update})
