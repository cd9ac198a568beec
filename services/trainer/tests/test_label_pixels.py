"""Pixels under chip masks, the indices-only choice and the val threshold (label_pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from eostream.shared.modelcard import BAND_SETS, ModelCard
from eostream.trainer.errors import DatasetError, ExportMismatchError
from eostream.trainer.label_pixels import (
    choose_threshold,
    mask_pixels,
    pixel_ious,
    rarer_class,
    threshold_across_dates,
    uses_bands,
)
from eostream.trainer.pixel import export_pixel_onnx, fit_pixel_model
from eostream.trainer.scaling import identity_scaling

BANDS = BAND_SETS["l2a"]


def _water_pixels(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance of ``n`` pixels: water (dark NIR/SWIR, index 0) or land (bright NIR, 1)."""
    y = (rng.random(n) > 0.2).astype(np.int64)  # 20 % water: the rarer class
    x = rng.uniform(0.02, 0.08, (n, len(BANDS))).astype(np.float32)
    nir = [BANDS.index(b) for b in ("B05", "B06", "B07", "B08", "B8A", "B11", "B12")]
    x[np.ix_(y == 1, nir)] += rng.uniform(0.15, 0.3, (int((y == 1).sum()), len(nir)))
    x[np.ix_(y == 0, nir)] *= 0.3
    return x, y


def test_mask_pixels_keeps_labelled_pixels_only() -> None:
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    masks = np.array([[[0, 255], [1, 1]], [[255, 255], [0, 255]]], np.uint8)
    px, py = mask_pixels(x, masks, max_pixels=100, seed=0)
    assert py.tolist() == [0, 1, 1, 0]
    assert px.shape == (4, 3) and px[0].tolist() == [0.0, 4.0, 8.0]  # chip 0, pixel (0, 0)
    px, py = mask_pixels(x, masks, max_pixels=2, seed=0)
    assert len(px) == len(py) == 2
    with pytest.raises(DatasetError, match="no labelled pixel"):
        mask_pixels(x, np.full_like(masks, 255), max_pixels=10, seed=0)
    with pytest.raises(DatasetError, match="do not match"):
        mask_pixels(x, masks[:1], max_pixels=10, seed=0)


def test_indices_alone_only_where_the_bands_allow_one() -> None:
    assert uses_bands(BAND_SETS["rgb"], indices_only=True)  # RGB: no near infrared, no index
    assert not uses_bands(BANDS, indices_only=True)
    assert uses_bands(BANDS, indices_only=False)


def test_threshold_chosen_on_held_out_pixels_is_exported(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = _water_pixels(4000, rng)
    model = fit_pixel_model(x, y, ("water", "other"), BANDS, seed=0, max_iter=30, with_bands=False)
    x_val, y_val = _water_pixels(2000, rng)
    water = rarer_class(y, 2)
    assert water == 0
    chosen = choose_threshold(model, x_val, y_val, water)
    assert 0.0 < chosen.threshold < 1.0 and chosen.iou >= chosen.iou_at_half
    tuned = model.with_threshold(water, 0.3)
    card = ModelCard(
        name="water",
        band_set="l2a",
        bands=BANDS,
        scaling=identity_scaling("l2a"),
        classes=("water", "other"),
        patch_size=1,
        task="pixel",
        library="scikit-learn",
        pixel_features="indices",
        class_log_shift=tuned.log_shift,
    )
    path = tmp_path / "model.onnx"
    export_pixel_onnx(tuned, card, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x_val})[0]
    assert (logits.argmax(1) == tuned.logits(x_val).argmax(1)).mean() > 0.999
    p_water = model.probabilities(x_val)[:, 0]
    assert (logits.argmax(1) == np.where(p_water > 0.3, 0, 1)).mean() > 0.999
    assert pixel_ious(tuned, x_val, y_val)["water"] > 0.9
    # a card that does not say how the model was fitted is refused at export
    for wrong in ({"pixel_features": "bands+indices"}, {"class_log_shift": None}):
        with pytest.raises(ExportMismatchError):
            export_pixel_onnx(tuned, card.model_copy(update=wrong), tmp_path / "bad.onnx")


def test_threshold_by_leave_one_date_out_needs_two_dates() -> None:
    rng = np.random.default_rng(1)
    dates = {d: _water_pixels(1500, rng) for d in ("a", "b", "c")}
    fits: list[int] = []

    def fit(x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
        fits.append(len(x))
        return fit_pixel_model(x, y, ("water", "other"), BANDS, seed=0, max_iter=20)

    chosen = threshold_across_dates(dates, fit, 0)
    assert chosen is not None and chosen.chosen_on == "dates"
    assert fits == [3000, 3000, 3000]  # each date scored by a model of the other two
    assert chosen.iou >= chosen.iou_at_half > 0.8
    assert threshold_across_dates({"a": dates["a"]}, fit, 0) is None
