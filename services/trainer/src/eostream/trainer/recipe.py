"""Train a patch classifier from the data folder in one call, without MLflow or a request.

For tests and benchmarks that need a real, freshly trained model (the map-accuracy test, the
map gate's test, the map-accuracy and int8 benchmarks): the same catalogue, selection, band
statistics, augmentations and fit as :mod:`eostream.trainer.pipeline`, minus tracking,
checkpoints and registration. The caller writes the model card and exports it
(:func:`eostream.trainer.export.export_onnx`), because what the card says differs per use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eostream.shared.holdout import HoldoutSettings
from eostream.shared.modelcard import BandScaling
from eostream.trainer.augment import training_augmentation
from eostream.trainer.bands import band_set_bands
from eostream.trainer.catalog import build_catalog
from eostream.trainer.datasets import PatchTensors, band_statistics, load_patches
from eostream.trainer.models import EuroSATNet, build_model
from eostream.trainer.scaling import fit_rgb_scaling, identity_scaling
from eostream.trainer.selection import Selection, SelectionSpec, select_for_training
from eostream.trainer.task import TrainConfig, fit


@dataclass(frozen=True)
class TrainingData:
    """The patches of one band set, split as the trainer splits them, and the card's scaling."""

    band_set: str
    bands: tuple[str, ...]
    scaling: tuple[BandScaling, ...]
    selection: Selection
    splits: dict[str, PatchTensors]

    @property
    def train(self) -> PatchTensors:
        return self.splits["train"]


def load_training_data(
    data_dir: Path,
    cache_dir: Path,
    band_set: str,
    *,
    samples_per_class: int | None = None,
    seed: int = 42,
    splits: Sequence[str] = ("train", "val"),
) -> TrainingData:
    """Select ``band_set``'s patches (hold-out excluded) and load ``splits`` of them."""
    table = build_catalog(data_dir, cache_dir, band_set)
    spec = SelectionSpec(band_set=band_set, samples_per_class=samples_per_class, seed=seed)
    selection = select_for_training(table, spec, data_dir, HoldoutSettings())
    scaling = identity_scaling(band_set) if band_set != "rgb" else fit_rgb_scaling(data_dir).scaling
    return TrainingData(
        band_set=band_set,
        bands=band_set_bands(band_set),
        scaling=scaling,
        selection=selection,
        splits={s: load_patches(data_dir, band_set, selection.of(s)) for s in splits},
    )


def fit_recipe(
    data: TrainingData,
    architecture: str,
    *,
    augmentations: Sequence[str] = (),
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 42,
    init_seed: int = 0,
) -> EuroSATNet:
    """Build ``architecture`` on ``data``'s band statistics, fit it on the train split for
    ``epochs`` (no early stop) on the CPU and return it in eval mode. ``init_seed`` seeds the
    weights, ``seed`` the fit's shuffling."""
    mean, std = band_statistics(data.train.x)
    units = {s.band: (s.scale, s.offset) for s in data.scaling}
    jitter = (
        training_augmentation(tuple(augmentations), data.bands, units) if augmentations else None
    )
    torch.manual_seed(init_seed)
    model = build_model(architecture, data.bands, mean, std, jitter)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=epochs,
        seed=seed,
    )
    fit(model, data.train, data.splits["val"], config, torch.device("cpu"))
    return model.cpu().eval()
