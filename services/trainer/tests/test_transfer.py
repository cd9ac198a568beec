"""Transfer learning through the registry: a 13-band model fine-tuned from a registered RGB model
(models:/NAME/VERSION), its first conv widened with the RGB filters at B04/B03/B02."""

from __future__ import annotations

import pytest
import torch

from eostream.shared.modelcard import BAND_SETS
from eostream.trainer.pipeline import tracker_for, train_and_register
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.settings import TrainerSettings


@pytest.mark.slow
def test_fine_tune_ms13_from_registered_rgb(sqlite_settings: TrainerSettings) -> None:
    tracker = tracker_for(sqlite_settings)
    rgb = train_and_register(
        TrainingPlan(
            request_id="rgb-base",
            model_name="base-rgb",
            band_set="rgb",
            epochs=1,
            samples_per_class=20,
            batch_size=32,
        ),
        sqlite_settings,
        tracker=tracker,
    )
    base_uri = f"models:/{rgb.version.name}/{rgb.version.version}"
    base, base_card = tracker.load_base(base_uri)
    ms = train_and_register(
        TrainingPlan(
            request_id="ms-tuned",
            model_name="tuned-ms",
            band_set="ms13",
            epochs=1,
            samples_per_class=20,
            batch_size=32,
            base_model=base_uri,
        ),
        sqlite_settings,
        tracker=tracker,
    )
    tuned, card = tracker.load_base(f"models:/{ms.version.name}/{ms.version.version}")
    assert card.band_set == "ms13" and card.bands == BAND_SETS["ms13"]
    assert base_card.band_set == "rgb" and base_card.scaling[0].scale > 100  # JPEG units
    assert tuned.first_conv.in_channels == 13 and base.first_conv.in_channels == 3
    # one epoch of fine-tuning moves the RGB filters only a little from where they started
    rgb_positions = [BAND_SETS["ms13"].index(b) for b in BAND_SETS["rgb"]]
    moved = (tuned.first_conv.weight[:, rgb_positions] - base.first_conv.weight).abs().mean()
    assert float(moved) < float(base.first_conv.weight.abs().mean())
    assert torch.isfinite(tuned(torch.rand(2, 13, 64, 64) * 0.3)).all()
