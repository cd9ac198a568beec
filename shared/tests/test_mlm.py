"""The STAC MLM item: generated from the card, validated offline, tampering detected."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

import pystac
import pytest

from eostream.shared import mlm
from eostream.shared.modelcard import BAND_SETS, BandScaling, ModelCard

SHA = hashlib.sha256(b"model").hexdigest()


@pytest.fixture
def card() -> ModelCard:
    return ModelCard(
        name="eurosat-landcover",
        band_set="rgb",
        bands=BAND_SETS["rgb"],
        scaling=tuple(
            BandScaling(band=b, scale=255.0 / 0.3, clip_min=0.0, clip_max=255.0)
            for b in BAND_SETS["rgb"]
        ),
        architecture="small_cnn",
        training_data_digest="0" * 64,
    )


def facts(card: ModelCard) -> mlm.MlmFacts:
    return mlm.MlmFacts(
        name="eurosat-landcover",
        version="3",
        card=card,
        artifact_href="s3://eostream/models/eurosat-landcover/3/model.onnx",
        sha256=SHA,
        size=12345,
        created=datetime(2026, 11, 21, tzinfo=UTC),
        run_id="abc",
        run_href="http://127.0.0.1:15000/#/experiments/1/runs/abc",
        metrics=(("test_accuracy", 0.9),),
    )


def item(card: ModelCard) -> dict[str, Any]:
    return mlm.build_item(facts(card), "s3://eostream/models/eurosat-landcover/3/item.json")


def test_item_describes_the_model_and_validates(card: ModelCard) -> None:
    data = item(card)
    assert mlm.validate_item(data, card, SHA) == []
    props = data["properties"]
    assert props["mlm:input"][0]["bands"] == ["B04", "B03", "B02"]
    assert props["mlm:input"][0]["input"]["shape"] == [-1, 3, 64, 64]
    scaling = props["mlm:input"][0]["value_scaling"]
    assert len(scaling) == 3 and "B04" in scaling[0]["expression"]
    classes = props["mlm:output"][0]["classification:classes"]
    assert [c["name"] for c in classes][:2] == ["AnnualCrop", "Forest"]
    model = data["assets"]["model"]
    assert model["file:checksum"] == "1220" + SHA and "mlm:model" in model["roles"]
    assert model["mlm:artifact_type"] == "onnx"
    rels = {link["rel"] for link in data["links"]}
    assert {"derived_from", "via", "self"} <= rels
    assert pystac.Item.from_dict(data).id == "eurosat-landcover-v3"


def test_wrong_band_order_is_caught(card: ModelCard) -> None:
    data = item(card)
    bad = copy.deepcopy(data)
    bad["properties"]["mlm:input"][0]["bands"] = ["B02", "B03", "B04"]
    assert any("input bands differ" in p for p in mlm.validate_item(bad, card, SHA))


def test_checksum_mismatch_and_broken_core_fields_are_caught(card: ModelCard) -> None:
    data = item(card)
    assert any("file:checksum" in p for p in mlm.validate_item(data, card, "0" * 64))
    broken = copy.deepcopy(data)
    del broken["geometry"]
    assert any("not a valid STAC item" in p for p in mlm.validate_item(broken, card, SHA))
    no_tasks = copy.deepcopy(data)
    del no_tasks["properties"]["mlm:tasks"]
    assert any("invalid MLM fields" in p for p in mlm.validate_item(no_tasks, card, SHA))
    bad_card = copy.deepcopy(data)
    bad_card["properties"][mlm.CARD_PROPERTY]["patch_size"] = "x"
    problems = mlm.validate_item(bad_card, card, SHA)  # listed, not raised
    assert any("model card is not valid" in p for p in problems), problems


def test_a_fine_tuned_model_names_its_base(card: ModelCard) -> None:
    assert item(card)["properties"]["mlm:pretrained"] is False
    tuned = dataclasses.replace(facts(card), base_model="models:/eurosat-rgb/4")
    data = mlm.build_item(tuned, "s3://eostream/models/eurosat-landcover/3/item.json")
    assert data["properties"]["mlm:pretrained"] is True
    assert data["properties"]["mlm:pretrained_source"] == "models:/eurosat-rgb/4"
    base = [link for link in data["links"] if link.get("title") == "base model"]
    assert [(link["rel"], link["href"]) for link in base] == [
        ("derived_from", "models:/eurosat-rgb/4")
    ]
    assert mlm.validate_item(data, card, SHA) == []


def test_a_map_output_is_described_as_a_second_output(card: ModelCard) -> None:
    """centre_cnn's per-pixel map output (the card's map_output) is listed after the window's
    classes: a semantic-segmentation output of the central block, with the same classes."""
    mapped = card.model_copy(update={"map_output": "pixel_logits", "map_block": 32})
    data = item(mapped)
    assert mlm.validate_item(data, mapped, SHA) == []
    first, second = data["properties"]["mlm:output"]
    assert first["name"] == "logits" and first["result"]["shape"] == [-1, 10]
    assert second["name"] == "pixel_logits" and second["tasks"] == ["semantic-segmentation"]
    assert second["result"]["shape"] == [-1, 10, 32, 32]
    assert second["classification:classes"] == first["classification:classes"]
