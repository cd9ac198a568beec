"""The registry-bridge calibrates its int8 files on the patches the trainer trains on: for each
band set, the bridge's candidates (``calibration.training_candidates``) are the trainer's catalogue
(``catalog.list_sources``), class by class, on the real data folder. Both read the MS manifest
through ``eostream.shared.holdout.ms_manifest_rows``; this holds them to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from eostream.registry_bridge.calibration import training_candidates
from eostream.shared.modelcard import EUROSAT_CLASSES
from eostream.trainer.catalog import list_sources


@pytest.mark.parametrize("band_set", ["rgb", "ms13"])
def test_the_bridge_calibrates_on_the_trainers_patches(data_dir: Path, band_set: str) -> None:
    trainer: dict[str, set[str]] = {cls: set() for cls in EUROSAT_CLASSES}
    for source in list_sources(data_dir, band_set):
        trainer[source.class_name].add(source.relpath)
    bridge = {cls: set(paths) for cls, paths in training_candidates(data_dir, band_set).items()}
    assert bridge == trainer
    assert all(trainer.values())  # every class has patches
