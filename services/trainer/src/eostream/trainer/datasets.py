"""Patches in memory: the selected EuroSAT files read once into float32 tensors.

RGB patches are the JPEG's 0..255 values (the RGB model's units). MS patches are reflectance
(DN / 10000, Level-1C) in the band set's order, read by band name from the GeoTIFF's
B01..B12,B8A order. EuroSAT is small (27,000 RGB patches are 1.3 GB as float32), so the whole
selection lives in memory and an epoch is index shuffling, no per-item I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eostream.shared.labels import MASK_UNKNOWN
from eostream.shared.modelcard import PATCH_SIZE
from eostream.trainer.bands import band_set_bands, file_indices
from eostream.trainer.errors import DatasetError
from eostream.trainer.selection import Patch

log = logging.getLogger(__name__)

DN_PER_REFLECTANCE = 10_000.0


#: a mask's value for a pixel of no known class
UNKNOWN = MASK_UNKNOWN


@dataclass(frozen=True)
class PatchTensors:
    x: torch.Tensor  # [N, C, 64, 64] float32, model units
    #: [N] int64 class indices; a segmentation set's per-pixel masks [N, H, W] (255: unknown)
    y: torch.Tensor
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    chw: np.ndarray = array.transpose(2, 0, 1)
    return chw


def read_ms(path: Path, bands: Sequence[str]) -> np.ndarray:
    """Reflectance of ``bands`` (in that order) from a EuroSAT MS GeoTIFF."""
    import rasterio

    indexes = [i + 1 for i in file_indices(bands)]
    with rasterio.open(path) as src:
        if src.count != 13:
            raise DatasetError(f"{path}: expected 13 bands, found {src.count}")
        dn = src.read(indexes)
    reflectance: np.ndarray = dn.astype(np.float32) / DN_PER_REFLECTANCE
    return reflectance


def load_patches(
    data_dir: Path, band_set: str, patches: Sequence[Patch], threads: int = 2
) -> PatchTensors:
    bands = band_set_bands(band_set)
    started = time.perf_counter()

    def read(patch: Patch) -> np.ndarray:
        path = data_dir / patch.href
        if not path.is_file():
            raise DatasetError(f"patch file {path} is missing (check EOSTREAM_DATA_DIR)")
        array = read_rgb(path) if band_set == "rgb" else read_ms(path, bands)
        if array.shape != (len(bands), PATCH_SIZE, PATCH_SIZE):
            raise DatasetError(f"{path}: shape {array.shape}, expected {len(bands)}x64x64")
        return array

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        arrays = list(pool.map(read, patches))
    if not arrays:
        raise DatasetError("no patches to load")
    x = torch.from_numpy(np.stack(arrays).astype(np.float32))
    y = torch.tensor([p.label for p in patches], dtype=torch.int64)
    elapsed = time.perf_counter() - started
    log.info(
        "read %d %s patches in %.1fs (%.0f patches/s)",
        len(arrays),
        band_set,
        elapsed,
        len(arrays) / max(elapsed, 1e-9),
    )
    return PatchTensors(x, y, tuple(p.item_id for p in patches))


def band_statistics(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation (floored so no band divides by ~0)."""
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return [float(v) for v in mean], [float(v) for v in std]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations, one draw per patch (train set only)."""
    return augment_pair(x, None, generator)[0]


def augment_pair(
    x: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`augment` of patches ``[N, C, H, W]`` and, with the same draws, of their per-pixel
    masks ``[N, H, W]`` (a segmentation model's targets turn with their pixels)."""
    n = x.shape[0]
    # drawn on the host and turned into index lists there: testing or masking with tensors on
    # an accelerator would make the host wait for it several times a batch
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    turns = torch.randint(0, 4, (n,), generator=generator)
    flipped = flips.to(x.device, non_blocking=True)
    turned = {k: torch.nonzero(turns == k).flatten() for k in (1, 2, 3)}
    turned = {k: v.to(x.device, non_blocking=True) for k, v in turned.items() if len(v)}

    def apply(t: torch.Tensor) -> torch.Tensor:
        view = flipped.view(-1, *([1] * (t.dim() - 1)))
        t = torch.where(view, t.flip(-1), t)
        out = t.clone()
        for k, chosen in turned.items():
            out[chosen] = torch.rot90(t[chosen], k, dims=(-2, -1))
        return out

    return apply(x), (apply(masks) if masks is not None else None)
