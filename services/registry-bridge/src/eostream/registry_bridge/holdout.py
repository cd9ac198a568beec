"""The fixed held-out set the gate evaluates every model on, loaded into memory.

Which files belong to it is decided in :mod:`eostream.shared.holdout` (salted name hashes, per
class), which the trainer uses too, to keep these files out of training.
Values are in the model's own units (see :mod:`eostream.shared.modelcard`): EuroSAT RGB JPEG
pixels 0..255 as R, G, B (= B04, B03, B02); EuroSAT MS DN / 10000 in the file's band order
(B8A last).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eostream.shared.holdout import digest_of, held_out_files
from eostream.shared.modelcard import EUROSAT_CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holdout:
    band_set: str
    files: tuple[str, ...]  # relative to the data folder
    labels: np.ndarray  # int64 class indices into EUROSAT_CLASSES
    images: np.ndarray  # float32 [N, C, 64, 64] in the model's units
    digest: str  # sha256 over the salt and the chosen file names
    source: str = ""  # the data folder the files are relative to
    #: the classes ``labels`` index: EuroSAT's, or a chip dataset's own (:func:`load_chips`)
    classes: tuple[str, ...] = EUROSAT_CLASSES
    #: every pixel's class ``[N, H, W]`` (255: unknown) for a segmentation model, which is
    #: scored pixel by pixel; None: one label per image
    masks: np.ndarray | None = None

    @property
    def label_names(self) -> list[str]:
        return [self.classes[int(i)] for i in self.labels]


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


def read_images(data_dir: Path, band_set: str, files: list[str]) -> np.ndarray:
    """EuroSAT files (relative to ``data_dir``) as float32 [N, C, 64, 64] in the model's units."""
    reader = _read_rgb if band_set == "rgb" else _read_ms
    return np.stack([reader(data_dir / f) for f in files])


def load(data_dir: Path, band_set: str, per_class: int, salt: str) -> Holdout:
    files = held_out_files(data_dir, band_set, per_class, salt)
    if not files:
        raise FileNotFoundError(
            f"no held-out images for {band_set} under {data_dir}: set EOSTREAM_DATA_DIR "
            "(or BRIDGE_DATA_DIR) to the data folder"
        )
    index = {cls: i for i, cls in enumerate(EUROSAT_CLASSES)}
    labels = np.array([index[Path(f).parent.name] for f in files], dtype=np.int64)
    images = read_images(data_dir, band_set, files)
    log.info(
        "held-out set %s: %d images, digest %s", band_set, len(files), digest_of(files, salt)[:12]
    )
    return Holdout(
        band_set, tuple(files), labels, images, digest_of(files, salt), str(data_dir.resolve())
    )


def load_chips(table: str, split: str = "test", *, masks: bool = False) -> Holdout:
    """The ``split`` chips of a chip dataset (``eostream labels chips``; the model card's
    ``dataset`` and ``dataset_test_split``): the held-out set of a model trained on it, whose
    classes are the dataset's. The EuroSAT hold-out cannot score such a model. ``masks``: with
    the chips' per-pixel masks (a segmentation model's hold-out)."""
    import hashlib

    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    path = Path(table)
    if not path.is_file():
        raise FileNotFoundError(f"the model's chip dataset {table} is not readable here")
    rows = pq.read_table(path).to_pylist()
    classes_at = {int(r["class_index"]): str(r["class"]) for r in rows}
    classes = tuple(classes_at[i] for i in sorted(classes_at))
    if list(sorted(classes_at)) != list(range(len(classes))):
        raise ValueError(f"{table}: class indices {sorted(classes_at)} are not 0..n-1")
    chosen = sorted((r for r in rows if r["split"] == split), key=lambda r: str(r["id"]))
    if not chosen:
        raise FileNotFoundError(f"the chip dataset {table} has no {split!r} chips")
    arrays: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    images, chip_masks = [], []
    for r in chosen:
        href = str(r["assets"]["image"]["href"])
        if href not in arrays:
            with np.load(path.parent / href) as npz:
                if masks and "mask" not in npz:
                    raise FileNotFoundError(f"{path.parent / href} has no per-pixel masks")
                arrays[href] = (npz["x"], npz["mask"] if masks else None)
        x, m = arrays[href]
        images.append(x[int(r["chip_index"])])
        if m is not None:
            chip_masks.append(m[int(r["chip_index"])])
    files = tuple(str(r["id"]) for r in chosen)
    h = hashlib.sha256(path.read_bytes())
    h.update(f"\n{split}{' pixels' if masks else ''}\n".encode())
    log.info("held-out chips %s (%s): %d chips of %s", split, path, len(files), ", ".join(classes))
    return Holdout(
        band_set=str(chosen[0]["band_set"]),
        files=files,
        labels=np.array([int(r["class_index"]) for r in chosen], dtype=np.int64),
        images=np.stack(images).astype(np.float32),
        digest=h.hexdigest(),
        source=str(path.resolve()),
        classes=classes,
        masks=np.stack(chip_masks).astype(np.uint8) if masks else None,
    )
