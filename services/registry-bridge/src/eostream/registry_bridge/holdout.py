"""The fixed held-out set the gate evaluates every model on.

Files are chosen by hashing their names with a salt, per class: the same files on every machine
and every run, whatever order the file system lists them in, without a split file to keep.
Values are in the model's own units (see :mod:`eostream.shared.modelcard`): EuroSAT RGB JPEG
pixels 0..255 as R, G, B (= B04, B03, B02); EuroSAT MS DN / 10000 in the file's band order
(B8A last).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eostream.shared.modelcard import EUROSAT_CLASSES

log = logging.getLogger(__name__)

RGB_DIR = "eurosat_rgb"
MS_DIR = "eurosat_ms"


@dataclass(frozen=True)
class Holdout:
    band_set: str
    files: tuple[str, ...]  # relative to the data folder
    labels: np.ndarray  # int64 class indices into EUROSAT_CLASSES
    images: np.ndarray  # float32 [N, C, 64, 64] in the model's units
    digest: str  # sha256 over the salt and the chosen file names
    source: str = ""  # the data folder the files are relative to

    @property
    def label_names(self) -> list[str]:
        return [EUROSAT_CLASSES[int(i)] for i in self.labels]


def rank(name: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()


def select(names_by_class: Mapping[str, Iterable[str]], per_class: int, salt: str) -> list[str]:
    """Pure: the ``per_class`` names of lowest salted hash in each class, classes in order."""
    chosen: list[str] = []
    for cls in EUROSAT_CLASSES:
        names = sorted(set(names_by_class.get(cls, ())), key=lambda n: rank(Path(n).name, salt))
        chosen.extend(sorted(names[:per_class]))
    return chosen


def digest_of(files: Iterable[str], salt: str) -> str:
    h = hashlib.sha256(salt.encode())
    for name in files:
        h.update(b"\0" + name.encode())
    return h.hexdigest()


def _rgb_candidates(data_dir: Path) -> dict[str, list[str]]:
    root = data_dir / RGB_DIR
    return {
        cls: [p.relative_to(data_dir).as_posix() for p in (root / cls).glob("*.jpg")]
        for cls in EUROSAT_CLASSES
    }


def _ms_candidates(data_dir: Path) -> dict[str, list[str]]:
    found: dict[str, dict[str, str]] = {cls: {} for cls in EUROSAT_CLASSES}
    for path in sorted((data_dir / MS_DIR).rglob("*.tif")):
        cls = path.parent.name
        if cls in found:  # the same patch may sit in two sources: keep one copy per name
            found[cls].setdefault(path.name, path.relative_to(data_dir).as_posix())
    return {cls: list(by_name.values()) for cls, by_name in found.items()}


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        pixels: np.ndarray = np.asarray(img.convert("RGB"), dtype=np.float32)
        return pixels.transpose(2, 0, 1)


def _read_ms(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        bands: np.ndarray = src.read().astype(np.float32) / 10000.0
        return bands


def load(data_dir: Path, band_set: str, per_class: int, salt: str) -> Holdout:
    if band_set == "rgb":
        candidates, reader = _rgb_candidates(data_dir), _read_rgb
    elif band_set == "ms13":
        candidates, reader = _ms_candidates(data_dir), _read_ms
    else:
        raise ValueError(f"unknown band set {band_set!r}; expected rgb or ms13")
    if not any(candidates.values()):
        raise FileNotFoundError(
            f"no held-out images for {band_set} under {data_dir}: set EOSTREAM_DATA_DIR "
            "(or BRIDGE_DATA_DIR) to the data folder"
        )
    files = select(candidates, per_class, salt)
    index = {cls: i for i, cls in enumerate(EUROSAT_CLASSES)}
    labels = np.array([index[Path(f).parent.name] for f in files], dtype=np.int64)
    images = np.stack([reader(data_dir / f) for f in files])
    log.info("held-out set %s: %d images, digest %s", band_set, len(files),
             digest_of(files, salt)[:12])
    return Holdout(band_set, tuple(files), labels, images, digest_of(files, salt),
                   str(data_dir.resolve()))
