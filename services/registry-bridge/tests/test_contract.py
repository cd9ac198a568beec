"""Contract checks on real ONNX exports of the tiny CNN (good ones and broken ones)."""

from __future__ import annotations

from typing import Any

from eostream.registry_bridge import contract, onnx_model
from eostream.shared.modelcard import BandScaling, ModelCard


def problems_of(data: bytes, card: ModelCard | None) -> list[str]:
    facts, problems = onnx_model.inspect(data)
    assert facts is not None, problems
    return contract.check_graph(facts, card)


def test_good_export_follows_the_contract(models: Any, export: Any, card: ModelCard) -> None:
    assert problems_of(export(models.better, card), card) == []


def test_fixed_batch_is_refused(models: Any, export: Any, card: ModelCard) -> None:
    problems = problems_of(export(models.better, card, dynamic=False), card)
    assert any("batch dimension is fixed at 2" in p for p in problems)


def test_wrong_input_name_and_missing_card(models: Any, export: Any, card: ModelCard) -> None:
    problems = problems_of(export(models.better, None, input_name="x"), card)
    assert any("input is named 'x'" in p for p in problems)
    assert any("no model card in the ONNX metadata" in p for p in problems)


def test_card_that_disagrees_with_the_graph(models: Any, export: Any, card: ModelCard) -> None:
    ms_card = ModelCard(
        name="m",
        band_set="ms13",
        bands=(
            "B01",
            "B02",
            "B03",
            "B04",
            "B05",
            "B06",
            "B07",
            "B08",
            "B09",
            "B10",
            "B11",
            "B12",
            "B8A",
        ),
        scaling=tuple(
            BandScaling(band=b, scale=1.0)
            for b in (
                "B01",
                "B02",
                "B03",
                "B04",
                "B05",
                "B06",
                "B07",
                "B08",
                "B09",
                "B10",
                "B11",
                "B12",
                "B8A",
            )
        ),
    )
    problems = problems_of(export(models.better, card), ms_card)
    assert any("differs from the version's tag" in p for p in problems)
    assert any("3 channels; the card declares 13 bands" in p for p in problems)


def test_wrong_band_order_in_card(models: Any, export: Any) -> None:
    bgr = ModelCard(
        name="m",
        band_set="rgb",
        bands=("B02", "B03", "B04"),
        scaling=tuple(BandScaling(band=b, scale=850.0) for b in ("B02", "B03", "B04")),
    )
    problems = problems_of(export(models.better, bgr), bgr)
    assert any("are not the rgb order" in p for p in problems)


def test_garbage_fails_the_checker() -> None:
    facts, problems = onnx_model.inspect(b"not an onnx model")
    assert facts is None and "onnx.checker" in problems[0]


def test_tags_must_be_complete_and_consistent(card: ModelCard) -> None:
    _, problems = contract.check_tags({"band_set": "ms13", "eostream.model_card": card.to_json()})
    assert "tag 'onnx_sha256' is missing" in problems
    assert any("tag band_set='ms13' but the model card says 'rgb'" in p for p in problems)
