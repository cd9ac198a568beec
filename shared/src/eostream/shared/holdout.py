"""Which EuroSAT files the registry-bridge's gate scores every model on: the fixed held-out set.

Files are chosen by hashing their names with a salt, per class: the same files on every machine
and every run, whatever order the file system lists them in, without a split file to keep.
Growing ``per_class`` keeps the files already chosen.

Two services use it: the bridge loads these files and scores each new version and the champion
on them; the trainer leaves them out of every split it trains, validates or tests on, so the gate
never scores a model on patches it learned from. Both must use the same settings (the defaults
match; ``BRIDGE_HOLDOUT__*`` and ``TRAINER_GATE_HOLDOUT__*`` override them).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from eostream.shared.modelcard import EUROSAT_CLASSES

RGB_DIR = "eurosat_rgb"
MS_DIR = "eurosat_ms"
#: every EuroSAT MS patch in the data folder, one row each: the tifs under ``eurosat_ms`` and the
#: EuroSAT100 STAC catalogue's (``eostream data fetch`` writes it where the data folder lacks it)
MS_MANIFEST = f"{MS_DIR}/MANIFEST.csv"
DEFAULT_SALT = "eostream-holdout-v1"
DEFAULT_PER_CLASS = 30


class HoldoutSettings(BaseModel):
    """The gate's held-out set: ``per_class`` files per class, chosen by salted name hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_class: int = Field(default=DEFAULT_PER_CLASS, ge=1, le=2000)
    salt: str = Field(default=DEFAULT_SALT, min_length=1)


def rank(name: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()


def choose(names_by_class: Mapping[str, Iterable[str]], per_class: int, salt: str) -> list[str]:
    """Pure: the ``per_class`` names of lowest salted hash (of the file name) in each class,
    classes in EuroSAT order. Names may be paths; only their last part is hashed."""
    chosen: list[str] = []
    for cls in EUROSAT_CLASSES:
        names = sorted(
            set(names_by_class.get(cls, ())), key=lambda n: rank(PurePosixPath(n).name, salt)
        )
        chosen.extend(sorted(names[:per_class]))
    return chosen


def digest_of(files: Iterable[str], salt: str) -> str:
    h = hashlib.sha256(salt.encode())
    for name in files:
        h.update(b"\0" + name.encode())
    return h.hexdigest()


def rgb_candidates(data_dir: Path) -> dict[str, list[str]]:
    root = data_dir / RGB_DIR
    return {
        cls: [p.relative_to(data_dir).as_posix() for p in (root / cls).glob("*.jpg")]
        for cls in EUROSAT_CLASSES
    }


def ms_candidates(data_dir: Path) -> dict[str, list[str]]:
    found: dict[str, dict[str, str]] = {cls: {} for cls in EUROSAT_CLASSES}
    for path in sorted((data_dir / MS_DIR).rglob("*.tif")):
        cls = path.parent.name
        if cls in found:  # the same patch may sit in two sources: keep one copy per name
            found[cls].setdefault(path.name, path.relative_to(data_dir).as_posix())
    return {cls: list(by_name.values()) for cls, by_name in found.items()}


def ms_manifest_rows(data_dir: Path) -> list[dict[str, str]]:
    """The rows of ``eurosat_ms/MANIFEST.csv`` the trainer trains on, in file order: each a
    patch of a EuroSAT class that is no other row's duplicate (``duplicate_of`` empty). Its
    columns: ``path`` (relative to ``data_dir``), ``class_name``, ``bytes``, ``epsg``, the
    native bounds ``minx``..``maxy``, ``source_split``. Raises FileNotFoundError without one."""
    with (data_dir / MS_MANIFEST).open(newline="") as f:
        return [
            row
            for row in csv.DictReader(f)
            if not row["duplicate_of"] and row["class_name"] in EUROSAT_CLASSES
        ]


def held_out_files(data_dir: Path, band_set: str, per_class: int, salt: str) -> list[str]:
    """The held-out files under ``data_dir`` (paths relative to it), classes in EuroSAT order."""
    if band_set == "rgb":
        candidates = rgb_candidates(data_dir)
    elif band_set == "ms13":
        candidates = ms_candidates(data_dir)
    else:
        raise ValueError(f"unknown band set {band_set!r}; expected rgb or ms13")
    return choose(candidates, per_class, salt)
