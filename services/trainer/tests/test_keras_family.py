"""The keras family: a Keras 3 CNN on the torch backend, fitted on real MS patches and exported to
the ONNX contract (names, dynamic batch, card), agreeing with keras; requests that ask the keras
family for what it cannot do are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eostream.registry_bridge.onnx_model import inspect
from eostream.shared.events import TrainingRequested
from eostream.shared.modelcard import BAND_SETS, INPUT_NAME, OUTPUT_NAME, ModelCard
from eostream.shared.onnx_contract import graph_problems
from eostream.trainer import keras_family  # sets KERAS_BACKEND=torch before keras loads
from eostream.trainer.catalog import CatalogTable
from eostream.trainer.datasets import band_statistics, load_patches
from eostream.trainer.errors import BadTrainingRequestError, ExportMismatchError
from eostream.trainer.export import onnx_logits, read_card
from eostream.trainer.plan import plan_training
from eostream.trainer.scaling import identity_scaling
from eostream.trainer.selection import SelectionSpec, select
from eostream.trainer.task import TrainConfig


def test_keras_onnx_follows_the_contract_and_agrees_with_keras(
    ms_table: CatalogTable, data_dir: Path, tmp_path: Path
) -> None:
    selection = select(ms_table, SelectionSpec("ms13", samples_per_class=12, seed=3))
    patches = load_patches(data_dir, "ms13", selection.patches[:40])
    bands = BAND_SETS["ms13"]
    mean, std = band_statistics(patches.x)
    model = keras_family.build_model(bands, mean, std, seed=0)
    # one short real fit, so the batch-norm statistics are not their initial values
    figures = keras_family.fit(
        model, patches, patches, TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3)
    )
    assert figures["epochs_run"] == 1.0 and figures["train_images_per_second"] > 0
    card = ModelCard(
        name="t",
        band_set="ms13",
        bands=bands,
        scaling=identity_scaling("ms13"),
        architecture="small_cnn",
        training_data_digest=selection.digest,
        library="keras",
        library_version=keras_family.library_version(),
    )
    path = tmp_path / "model.onnx"
    sha = keras_family.export_onnx(model, card, path)

    assert len(sha) == 64 and read_card(path) == card
    facts, problems = inspect(path.read_bytes())  # what the registry-bridge's gate reads
    assert problems == [] and facts is not None
    assert graph_problems(facts, card) == []
    (inp,), (out,) = facts.inputs, facts.outputs
    assert (inp.name, inp.shape, inp.dtype) == (INPUT_NAME, ("batch", 13, 64, 64), "float32")
    assert (out.name, out.shape) == (OUTPUT_NAME, ("batch", 10))
    check = keras_family.check_onnx(path, model, patches.x, tolerance=1e-3)
    assert check.argmax_agreement == 1.0 and check.max_abs_diff < 1e-3 and check.samples == 40
    for batch in (1, 7):  # the batch dimension is dynamic
        assert onnx_logits(path, patches.x[:batch].numpy()).shape == (batch, 10)

    # a keras model that differs from the export is caught
    head = model.get_layer(OUTPUT_NAME)
    head.bias.assign(np.linspace(0, 5, 10).astype("float32"))
    with pytest.raises(ExportMismatchError, match="disagrees with keras"):
        keras_family.check_onnx(path, model, patches.x, tolerance=1e-3)


def test_the_family_is_optional_and_checked() -> None:
    old = TrainingRequested().model_dump(mode="json")
    del old["family"]  # a request written before the field existed
    assert plan_training(TrainingRequested.model_validate(old)).family == "torch"
    assert plan_training(TrainingRequested(family="keras")).family == "keras"
    bad = {
        "family 'jax' is unknown": TrainingRequested(family="jax"),
        "the keras family builds ['small_cnn'], not 'resnet18'": TrainingRequested(
            family="keras", architecture="resnet18"
        ),
        "the keras family trains from scratch": TrainingRequested(
            family="keras", base_model="models:/eurosat-landcover/1"
        ),
    }
    for reason, request in bad.items():
        with pytest.raises(BadTrainingRequestError, match=reason.replace("[", r"\[")):
            plan_training(request)
