"""The EuroSAT training patches an int8 model is calibrated on: never one of the gate's
hold-out, so the int8 model is not checked on patches it was calibrated on (:mod:`.quantize`)."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

import numpy as np

from eostream.registry_bridge.holdout import read_images
from eostream.shared.holdout import (
    MS_MANIFEST,
    HoldoutSettings,
    choose,
    held_out_files,
    ms_candidates,
    ms_manifest_rows,
    rgb_candidates,
)
from eostream.shared.modelcard import EUROSAT_CLASSES

CALIBRATION_SALT = "eostream-int8-calibration-v1"


def training_candidates(data_dir: Path, band_set: str) -> dict[str, list[str]]:
    """The patches the trainer trains a band set on, by class (paths relative to ``data_dir``):
    every EuroSAT RGB JPEG; for ``ms13`` the rows of ``eurosat_ms/MANIFEST.csv`` that are not
    duplicates (the trainer's catalogue: ``eurosat_ms`` and the EuroSAT100 STAC catalogue's
    tifs), or without a manifest the tifs under ``eurosat_ms``."""
    if band_set == "rgb":
        return rgb_candidates(data_dir)
    if not (data_dir / MS_MANIFEST).is_file():
        return ms_candidates(data_dir)
    found: dict[str, list[str]] = {cls: [] for cls in EUROSAT_CLASSES}
    for row in ms_manifest_rows(data_dir):
        found[row["class_name"]].append(row["path"])
    return found


def calibration_files(
    data_dir: Path, band_set: str, size: int, holdout: HoldoutSettings
) -> list[str]:
    """About ``size`` training patches (paths relative to ``data_dir``), up to the same number
    per class, none of them in the hold-out (by class and file name, as the trainer leaves it
    out). For ``ms13`` they come from all the trainer's patches (:func:`training_candidates`),
    not only those the hold-out is drawn from: in the data folder the hold-out takes 270 of
    the 276 tifs under ``eurosat_ms``, and without the EuroSAT100 catalogue's 99 the 13-band
    models calibrated on 6 patches of 2 classes (benchmarks/inference/README.md)."""
    candidates = training_candidates(data_dir, band_set)
    held = {
        (PurePosixPath(f).parent.name, PurePosixPath(f).name)
        for f in held_out_files(data_dir, band_set, holdout.per_class, holdout.salt)
    }
    remaining = {
        cls: [f for f in names if (cls, PurePosixPath(f).name) not in held]
        for cls, names in candidates.items()
    }
    return choose(remaining, math.ceil(size / len(EUROSAT_CLASSES)), CALIBRATION_SALT)


def load_calibration(
    data_dir: Path, band_set: str, size: int, holdout: HoldoutSettings
) -> np.ndarray:
    files = calibration_files(data_dir, band_set, size, holdout)
    if not files:
        raise FileNotFoundError(f"no {band_set} training patches under {data_dir} to calibrate on")
    return read_images(data_dir, band_set, files)
