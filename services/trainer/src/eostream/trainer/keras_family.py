"""The keras family (``TrainingRequested.family == "keras"``): a Keras 3 CNN, same contract.

A Keras 3 ``small_cnn`` (the torch family's four conv-BN-ReLU-pool blocks, channels first, so the
graph takes ``[N, C, 64, 64]`` as the contract says) with the per-band normalisation inside the
model (a ``Normalization`` layer holding the training patches' mean and variance). It is trained
by ``model.fit`` on the trainer's own selection (same catalogue, hold-out exclusion, splits and
patches: :mod:`eostream.trainer.pipeline` hands them in), with ``mlflow.keras.autolog`` in the
trainer's run; exported by ``model.export(path, format="onnx")``, its graph renamed to the
contract's ``input``/``logits``, its dynamic batch checked, the card embedded, and the ONNX
checked against Keras on the test patches before anything is registered. To the registry-bridge
and inference the version is like a torch one; only the card's ``library`` says ``keras``.

Not (yet) for keras: other architectures, fine-tuning (``base_model``), the training-only input
augmentations (``TRAINER_INPUT_AUGMENTATION``) and resuming from an epoch checkpoint (a crashed
request trains again from scratch, in its MLflow run).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Keras chooses its backend once, at its first import, from KERAS_BACKEND, and defaults to
# TensorFlow, which eostream does not install. This module is the trainer's only way to keras:
# it sets the variable before importing it, and mlflow.keras (which imports keras) is imported
# only by the Tracker methods this module calls. The pipeline imports this module only for a
# keras request, so the torch family never loads keras.
os.environ["KERAS_BACKEND"] = "torch"

import keras
import numpy as np
import torch

from eostream.shared.digest import file_sha256_hex
from eostream.shared.errors import ConfigError
from eostream.shared.modelcard import (
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    PATCH_SIZE,
    ModelCard,
)
from eostream.trainer.datasets import PatchTensors, band_statistics
from eostream.trainer.errors import ExportMismatchError
from eostream.trainer.export import ExportCheck, compare_onnx, onnx_logits
from eostream.trainer.models import NUM_CLASSES
from eostream.trainer.scoring import evaluate, predict
from eostream.trainer.task import BatchCallback, TrainConfig

if TYPE_CHECKING:
    from eostream.trainer.pipeline import Fitted
    from eostream.trainer.tracking import Tracker

if keras.backend.backend() != "torch":  # keras was imported elsewhere first
    raise ConfigError(
        f"keras runs on its {keras.backend.backend()} backend; the trainer's keras family needs "
        "KERAS_BACKEND=torch set before keras is first imported"
    )

log = logging.getLogger(__name__)

LIBRARY = "keras"
_CHANNELS_FIRST = "channels_first"
#: the patches the ONNX is checked on against keras (as the torch family's check)
CHECK_SAMPLES = 256


def library_version() -> str:
    return str(keras.__version__)


def build_model(
    bands: Sequence[str], mean: Sequence[float], std: Sequence[float], seed: int = 0
) -> Any:
    """The keras ``small_cnn``: normalisation, four conv-BN-ReLU-pool blocks (64 -> 4 px),
    global average pooling, dropout and a linear head; ~0.25 M parameters for 13 bands."""
    if not len(bands) == len(mean) == len(std):
        raise ValueError("one mean and std per band")
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((len(bands), PATCH_SIZE, PATCH_SIZE), name=INPUT_NAME)
    x = layers.Normalization(
        axis=1, mean=list(mean), variance=[s * s for s in std], name="normalize"
    )(inputs)
    for i, width in enumerate((32, 64, 128, 128)):
        x = layers.Conv2D(
            width, 3, padding="same", use_bias=False, data_format=_CHANNELS_FIRST, name=f"conv{i}"
        )(x)
        x = layers.BatchNormalization(axis=1, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(2, data_format=_CHANNELS_FIRST, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(data_format=_CHANNELS_FIRST, name="pool")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="keras_small_cnn")


class _Progress(keras.callbacks.Callback):  # type: ignore[misc]
    """Tells the trainer's batch callback how many images each batch had (its progress bar,
    and the embedded mode's interruption point: the callback raises to stop a training)."""

    def __init__(self, on_batch: BatchCallback, images: int, batch_size: int) -> None:
        super().__init__()
        self._on_batch = on_batch
        self._images = images
        self._batch_size = batch_size

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._on_batch(min(self._batch_size, self._images - batch * self._batch_size))


def fit(
    model: Any,
    train: PatchTensors,
    val: PatchTensors,
    config: TrainConfig,
    on_batch: BatchCallback | None = None,
) -> dict[str, float]:
    """``model.fit`` with AdamW and early stopping on validation accuracy (the best epoch's
    weights kept, as the torch family keeps its best); returns the run's fit figures."""
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            mode="max",
            patience=config.patience,
            restore_best_weights=True,
        )
    ]
    if on_batch is not None:
        callbacks.append(_Progress(on_batch, len(train), config.batch_size))
    started = time.perf_counter()
    history = model.fit(
        train.x.numpy(),
        train.y.numpy(),
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(val.x.numpy(), val.y.numpy()),
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    elapsed = time.perf_counter() - started
    val_accuracy = list(history.history.get("val_accuracy", [0.0]))
    epochs_run = len(val_accuracy)
    return {
        "best_epoch": float(int(np.argmax(val_accuracy)) + 1),  # from 1; its step: best_step
        "best_step": float(int(np.argmax(val_accuracy))),
        "epochs_run": float(epochs_run),
        "train_images_per_second": len(train) * epochs_run / max(elapsed, 1e-9),
    }


def logits(model: Any, x: torch.Tensor) -> np.ndarray:
    """Keras' own logits of ``x`` (inference mode, on the CPU)."""
    return predict(model, x, torch.device("cpu")).numpy()


def export_onnx(model: Any, card: ModelCard, path: Path) -> str:
    """``model.export(format="onnx")``, then the contract: input ``input`` and output ``logits``
    (keras names the output after an internal node), a dynamic batch on both, the card in the
    metadata. Returns the file's SHA-256."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="eostream-keras-") as tmp:
        raw = Path(tmp) / "keras.onnx"
        with warnings.catch_warnings():  # the trace's notes on keras' shape checks
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            model.export(str(raw), format="onnx", verbose=False)
        proto = onnx.load(str(raw))
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportMismatchError(
            f"keras exported {len(graph.input)} inputs and {len(graph.output)} outputs; "
            "the contract has one of each"
        )
    _rename(graph, graph.input[0].name, INPUT_NAME)
    _rename(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (graph.input[0], graph.output[0]):
        batch = value.type.tensor_type.shape.dim[0]
        if batch.HasField("dim_value"):
            raise ExportMismatchError(
                f"keras exported {value.name!r} with a fixed batch of {batch.dim_value}"
            )
        batch.dim_param = "batch"
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()
    proto.producer_name = "eostream-trainer (keras)"
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return file_sha256_hex(path)


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename the tensor ``old`` to ``new`` everywhere in ``graph`` (its nodes and its I/O)."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def check_onnx(path: Path, model: Any, x: torch.Tensor, tolerance: float) -> ExportCheck:
    """The ONNX against keras on ``x`` (one batch), and its dynamic batch: one patch alone gets
    the logits it gets in the batch."""
    check = compare_onnx(path, logits(model, x), x.numpy(), tolerance, LIBRARY)
    alone = onnx_logits(path, x[:1].numpy())
    batched = onnx_logits(path, x[: min(len(x), 3)].numpy())
    if alone.shape != (1, NUM_CLASSES) or not np.allclose(alone, batched[:1], atol=tolerance):
        raise ExportMismatchError(
            f"the keras ONNX's batch is not dynamic: one patch gave {alone.shape} logits"
        )
    return check


def fit_and_export(
    card: ModelCard,
    data: Mapping[str, PatchTensors],
    config: TrainConfig,
    *,
    tracker: Tracker,
    device: torch.device,
    tolerance: float,
    on_batch: BatchCallback | None = None,
) -> Fitted:
    """The keras family's part of :func:`eostream.trainer.pipeline.train_and_register`: build,
    fit (autologged to the active run), evaluate, export, check and log the model."""
    from eostream.trainer.pipeline import ONNX_CHECK_SAMPLES, Fitted

    mean, std = band_statistics(data["train"].x)
    with keras.device(device.type):
        model = build_model(card.bands, mean, std, seed=config.seed)
        with tracker.keras_autolog():
            figures = fit(model, data["train"], data["val"], config, on_batch)
    cpu = torch.device("cpu")
    results = {s: evaluate(model, data[s], cpu) for s in ("val", "test")}
    with tempfile.TemporaryDirectory(prefix="eostream-keras-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        sha256 = export_onnx(model, card, onnx_path)
        check = check_onnx(onnx_path, model, data["test"].x[:ONNX_CHECK_SAMPLES], tolerance)
        tracker.log_artifact(onnx_path, "onnx")
        tracker.log_onnx_model(onnx_path, data["test"].x[:2].numpy())
    model_uri = tracker.log_keras_model(
        model,
        data["test"].x[:2].numpy(),
        [f"keras=={library_version()}", f"torch=={torch.__version__.split('+')[0]}"],
    )
    metrics = {
        **figures,
        "onnx_max_abs_diff": check.max_abs_diff,
        "onnx_argmax_agreement": check.argmax_agreement,
    }
    return Fitted(results=results, metrics=metrics, sha256=sha256, model_uri=model_uri)
