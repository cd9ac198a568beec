"""A segmentation model maps a real scene per pixel: windows overlapping by half, each keeping
its centre, give exactly the map of the same network run over the whole scene at once (no
seams at window edges), with probabilities, through the load-time contract."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from eostream.inference.engine import NODATA, classify, plan_for, softmax
from eostream.inference.errors import ModelLoadError
from eostream.inference.fetch import gdal_env
from eostream.inference.model import ModelInfo, load_model
from eostream.inference.scene import SceneReader, prepare_scene
from eostream.inference.testing import build_onnx, build_segmentation_onnx
from eostream.shared.modelcard import BAND_SETS, OUTPUT_NAME, BandScaling, ModelCard

BANDS = BAND_SETS["rgb"]
CARD = ModelCard(
    name="seg",
    band_set="rgb",
    bands=BANDS,
    scaling=tuple(BandScaling(band=b, scale=10000.0) for b in BANDS),
    classes=("water", "land", "other"),
    patch_size=32,
    processing_level="L2A",
    task="segmentation",
    architecture="tiny_segmentation",
)


def test_windows_give_the_whole_scene_map_without_seams(
    boadella_item: Callable[[str], Path],
) -> None:
    href = boadella_item("2020-06-21")
    model = load_model(
        build_segmentation_onnx(CARD, seed=3),
        ModelInfo("seg", "1"),
        expected_sha256=None,
        providers=("CPUExecutionProvider",),
    )
    plan = prepare_scene(
        json.loads(href.read_text()), str(href), CARD, policy="refuse", b10_fill=0.0
    )
    with SceneReader(plan, CARD, gdal_env(None), max_pixels=10**8) as reader:
        windows = plan_for(CARD, reader.height, reader.width, stride=8)
        units, invalid = reader.read(0, reader.height)
        got = classify(reader, model, windows, batch_size=37, probabilities=True)
    assert (windows.patch, windows.stride, windows.margin) == (32, 16, 8)
    assert got.labels.shape == (377, 380) and not invalid.any()
    assert (got.labels != NODATA).all()

    # the same network over the whole scene at once (free height and width), reflect-padded
    # like the windows' margins; every pixel must get the same class
    whole = ort.InferenceSession(
        build_segmentation_onnx(CARD, seed=3, any_size=True), providers=["CPUExecutionProvider"]
    )
    padded = np.pad(units, ((0, 0), (8, 8), (8, 8)), mode="reflect")[None]
    logits = whole.run([OUTPUT_NAME], {"input": padded.astype(np.float32)})[0]
    expected = logits[0, :, 8:-8, 8:-8]
    assert (got.labels == expected.argmax(axis=0)).mean() > 0.9999
    assert len(np.unique(got.labels)) == 3, "a map, not one class"
    probs = np.rint(softmax(expected[None])[0] * 254).astype(np.int16)
    assert got.probabilities is not None
    assert np.abs(got.probabilities.astype(np.int16) - probs).max() <= 1
    # every window boundary (multiples of the stride) agrees like the interior does
    for edge in range(16, 377, 16):
        assert (
            got.labels[edge - 1 : edge + 1] == expected.argmax(axis=0)[edge - 1 : edge + 1]
        ).all()


def test_a_segmentation_card_on_a_patch_graph_is_refused() -> None:
    """A graph that gives one score per window cannot pass for a segmentation model."""
    card = CARD.model_copy(update={"patch_size": 64})
    with pytest.raises(ModelLoadError, match=r"rank 2; the contract says \[N, classes, P, P\]"):
        load_model(
            build_onnx(card),
            ModelInfo("seg", "1"),
            expected_sha256=None,
            providers=("CPUExecutionProvider",),
        )
