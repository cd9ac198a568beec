"""Pure request checks: what a good request becomes, and that data changes retrain idempotently."""

from __future__ import annotations

from pathlib import Path

import pytest

from eostream.shared.events import DatasetUpdated, TrainingRequested
from eostream.trainer import labelled
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.plan import plan_for_dataset, plan_training
from eostream.trainer.registered import parse_model_uri
from eostream.trainer.settings import TrainerSettings


def test_good_request_becomes_a_plan() -> None:
    plan = plan_training(
        TrainingRequested(
            band_set="ms13",
            architecture="resnet18",
            epochs=3,
            base_model="models:/eurosat-landcover@champion",
            split="spatial",
        )
    )
    assert (plan.band_set, plan.architecture, plan.epochs, plan.split) == (
        "ms13",
        "resnet18",
        3,
        "spatial",
    )
    assert parse_model_uri("models:/eurosat-landcover/7") == ("eurosat-landcover", "7", None)
    assert parse_model_uri(plan.base_model or "") == ("eurosat-landcover", None, "champion")


def test_all_problems_are_named_at_once() -> None:
    with pytest.raises(BadTrainingRequestError) as info:
        plan_training(TrainingRequested(band_set="rgbn", architecture="vgg", model_name="a b"))
    message = str(info.value)
    assert "band_set 'rgbn'" in message and "architecture 'vgg'" in message
    assert "model_name 'a b'" in message


def test_dataset_update_retrains_once_per_digest() -> None:
    event = DatasetUpdated(dataset="eurosat", href="file:///data", digest="f" * 64, band_set="rgb")
    first = plan_for_dataset(event, "eurosat-landcover", epochs=5)
    again = plan_for_dataset(event.model_copy(), "eurosat-landcover", epochs=5)
    changed = plan_for_dataset(
        event.model_copy(update={"digest": "e" * 64}), "eurosat-landcover", epochs=5
    )
    assert first.request_id == again.request_id != changed.request_id
    assert first.epochs == 5 and first.requested_by == "dataset.updated"


def test_a_eurosat_folder_retrains_the_default_model(tmp_path: Path) -> None:
    """A data folder holding eurosat_rgb/ (or that folder itself) retrains the default model;
    other folders are dead-lettered (test_service.py)."""
    (tmp_path / "eurosat_rgb").mkdir()
    settings = TrainerSettings(bus="memory", default_model_name="live")
    for href in (str(tmp_path), (tmp_path / "eurosat_rgb").as_uri()):
        event = DatasetUpdated(dataset="eurosat", href=href, digest="f" * 64, band_set="rgb")
        plan = labelled.dataset_plan(event, settings)
        assert (plan.model_name, plan.requested_by) == ("live", "dataset.updated")
    assert not labelled.is_eurosat_folder(tmp_path / "eurosat_ms")  # not there


def test_a_pixel_model_is_planned_for_ms13_only() -> None:
    plan = plan_training(TrainingRequested(band_set="ms13", architecture="pixel_hgb"))
    assert plan.architecture == "pixel_hgb"
    with pytest.raises(BadTrainingRequestError) as info:
        plan_training(
            TrainingRequested(band_set="rgb", architecture="pixel_rf", base_model="models:/m/1")
        )
    message = str(info.value)
    assert "takes band_set ms13" in message and "cannot be fine-tuned" in message


def test_the_recipe_extras_reach_the_plan_and_are_refused_where_they_mean_nothing() -> None:
    plan = plan_training(TrainingRequested(label_smoothing=0.1, mix="both", ema_decay=0.999))
    assert (plan.label_smoothing, plan.mix, plan.ema_decay) == (0.1, "both", 0.999)
    with pytest.raises(BadTrainingRequestError, match="for the torch family"):
        plan_training(TrainingRequested(family="sklearn", architecture="pixel_hgb", mix="mixup",
                                        band_set="ms13"))  # fmt: skip
    with pytest.raises(BadTrainingRequestError, match="trains on masks"):
        plan_training(TrainingRequested(architecture="seg_unet", dataset="chips", mix="cutmix"))
