"""Chip datasets: chips cut from labelled scenes (``eostream labels chips``) as stac-geoparquet,
and the trainer's selection from them with DuckDB, as for EuroSAT.

A dataset folder holds ``chips.parquet`` (one STAC item per chip: footprint, datetime, scene,
``class``, ``class_index``, ``split``, the ``image`` and ``mask`` assets naming the scene's array
file and the chip's ``chip_index`` in it), ``arrays/<scene>.npz`` (``x``: reflectance
[n, bands, size, size], ``mask``: per-pixel class indices, 255 unknown) and ``dataset.json`` (the
counts, the rules, the drop reasons; for people).

The class list is the dataset's: ``class`` ordered by ``class_index``, read back with DuckDB.
The split is the one recorded when the chips were cut (spatial blocks with a gap, or dates); the
trainer never re-splits a chip dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from eostream.shared.labels import MASK_UNKNOWN as UNKNOWN
from eostream.trainer.catalog import CatalogTable
from eostream.trainer.errors import DatasetError
from eostream.trainer.selection import SPLITS, Patch, Selection, SelectionSpec

if TYPE_CHECKING:
    from eostream.inference.chips import ChipRules, ChipSet
    from eostream.trainer.datasets import PatchTensors

TABLE = "chips.parquet"
ARRAYS = "arrays"
COLLECTION = "eostream-chips"


@dataclass(frozen=True)
class ChipDataset:
    """A chip dataset as the trainer sees it (all read from its table)."""

    path: Path
    digest: str
    count: int
    classes: tuple[str, ...]
    band_set: str
    size: int
    processing_level: str

    @property
    def table(self) -> CatalogTable:
        return CatalogTable(self.band_set, self.path, self.digest, self.count)


def chip_items(chipset: ChipSet, arrays: dict[str, str]) -> list[dict[str, Any]]:
    """One STAC item (label extension) per chip; asset hrefs relative to the dataset folder."""
    import pystac
    from pystac.extensions.label import LabelClasses, LabelExtension, LabelType

    items = []
    for chip in chipset.chips:
        w, s, e, n = chip.bbox
        href = f"{ARRAYS}/{arrays[chip.scene_id]}"
        item = pystac.Item(
            id=f"{chip.scene_id}-r{chip.row}-c{chip.col}",
            geometry={"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
            bbox=[w, s, e, n],
            datetime=pystac.utils.str_to_datetime(chip.datetime),
            properties={
                "class": chip.class_name,
                "class_index": chip.class_index,
                "class_share": round(chip.share, 4),
                "split": chip.split,
                "scene_id": chip.scene_id,
                "chip_row": chip.row,
                "chip_col": chip.col,
                "chip_index": chip.index,
                "band_set": _band_set(chipset.bands),
                "processing:level": chipset.processing_level,
                "proj:shape": [chipset.size, chipset.size],
            },
            collection=COLLECTION,
        )
        label = LabelExtension.ext(item, add_if_missing=True)
        label.apply(
            label_description=f"class covering >= {chip.share:.0%} of the chip",
            label_type=LabelType.RASTER,
            label_properties=["class"],
            label_classes=[LabelClasses.create(classes=list(chipset.classes), name="class")],
            label_tasks=["classification", "segmentation"],
            label_methods=["manual"],
        )
        for key, role in (("image", "data"), ("mask", "labels")):
            item.add_asset(
                key,
                pystac.Asset(
                    href=href,
                    media_type="application/x-npz",
                    roles=[role],
                    extra_fields={"eostream:array": "x" if key == "image" else "mask"},
                ),
            )
        items.append(item.to_dict())
    return items


def _band_set(bands: tuple[str, ...]) -> str:
    from eostream.shared.modelcard import BAND_SETS

    return next(name for name, b in BAND_SETS.items() if b == bands)


def write(chipset: ChipSet, out_dir: Path, rules: ChipRules) -> Path:
    """Write ``chipset`` as a chip dataset under ``out_dir``; returns its table."""
    import stac_geoparquet.arrow

    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = chipset.write_arrays(out_dir / ARRAYS)
    reader = stac_geoparquet.arrow.parse_stac_items_to_arrow(chip_items(chipset, arrays))
    path = out_dir / TABLE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    stac_geoparquet.arrow.to_parquet(reader, tmp)
    tmp.replace(path)
    summary = {
        "labels": chipset.labels_href,
        "classes": list(chipset.classes),
        "bands": list(chipset.bands),
        "size": chipset.size,
        "processing_level": chipset.processing_level,
        "rules": asdict(rules),
        "counts": chipset.counts(),
        "dropped": dict(chipset.dropped),
    }
    (out_dir / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def table_path(href: str | Path) -> Path:
    path = Path(href)
    if path.is_dir():
        path = path / TABLE
    if not path.is_file():
        raise DatasetError(f"no chip dataset at {href} (expected a folder with {TABLE})")
    return path


def open_dataset(href: str | Path) -> ChipDataset:
    """The dataset's table, classes (by ``class_index``), band set, chip size and level."""
    import duckdb

    path = table_path(href)
    try:
        with duckdb.connect() as con:
            classes = con.execute(
                "SELECT class, class_index FROM read_parquet($p) GROUP BY ALL ORDER BY class_index",
                {"p": str(path)},
            ).fetchall()
            meta = con.execute(
                'SELECT DISTINCT band_set, "proj:shape"[1], "processing:level" '
                "FROM read_parquet($p)",
                {"p": str(path)},
            ).fetchall()
            count = con.execute(
                "SELECT count(*) FROM read_parquet($p)", {"p": str(path)}
            ).fetchone()
            blanks = con.execute(REQUIRED_SQL, {"p": str(path)}).fetchone()
    except duckdb.Error as exc:
        raise DatasetError(f"{path} is not a chip dataset table: {exc}") from None
    if blanks and blanks[0]:
        raise DatasetError(
            f"{path}: {blanks[0]} chip(s) without a class, class_index, proj:shape, image "
            "href or chip_index; cut it again"
        )
    indices = [int(i) for _, i in classes]
    if indices != list(range(len(indices))) or len(meta) != 1:
        raise DatasetError(
            f"{path}: classes {classes} or band set/size {meta} are inconsistent; cut it again"
        )
    if len(indices) < 2:
        raise DatasetError(f"{path}: one class ({classes}): a model needs at least two to tell")
    if not MIN_CHIP <= int(meta[0][1]) <= MAX_CHIP:
        raise DatasetError(f"{path}: chips of {meta[0][1]} px; from {MIN_CHIP} to {MAX_CHIP}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    band_set, size, level = meta[0]
    return ChipDataset(
        path,
        digest,
        int(count[0]) if count else 0,
        tuple(str(c) for c, _ in classes),
        str(band_set),
        int(size),
        str(level),
    )


#: chips that lack what training reads (counted: a dataset with any is refused)
REQUIRED_SQL = """
    SELECT count(*) FROM read_parquet($p)
    WHERE class IS NULL OR class_index IS NULL OR "proj:shape" IS NULL
       OR len("proj:shape") <> 2 OR "proj:shape"[1] IS NULL
       OR assets.image.href IS NULL OR chip_index IS NULL
"""
#: the chip sizes taken: the cutter's (ChipRules) and TRAINER_LABEL_CHIP_SIZE's range (2 px
#: chips failed in the model's pooling, after the run had started)
MIN_CHIP, MAX_CHIP = 8, 1024

SELECT_SQL = """
    SELECT id, class, class_index, assets.image.href AS href, chip_index, split
    FROM read_parquet($path)
    ORDER BY id
"""


def select(dataset: ChipDataset, seed: int = 42) -> Selection:
    """Every chip with its recorded split (the dataset's classes, none left out)."""
    import duckdb

    with duckdb.connect() as con:
        rows = con.execute(SELECT_SQL, {"path": str(dataset.path)}).fetchall()
    patches = tuple(
        Patch(str(r[0]), str(r[1]), int(r[2]), f"{r[3]}#{int(r[4])}", str(r[5])) for r in rows
    )
    spec = SelectionSpec(
        band_set=dataset.band_set, classes=dataset.classes, split="spatial", seed=seed,
        vocabulary=dataset.classes,
    )  # fmt: skip
    h = hashlib.sha256(dataset.digest.encode())
    for p in patches:
        h.update(f"{p.item_id}\t{p.label}\t{p.split}\n".encode())
    selection = Selection(spec, dataset.table, patches, h.hexdigest(), SELECT_SQL)
    counts = selection.counts()
    empty = [s for s in SPLITS if counts[s] == 0]
    if empty:
        raise DatasetError(f"the chip dataset has no chips in {empty} ({counts}); cut it again")
    return selection


def _stacked(dataset: ChipDataset, patches: list[Patch], array: str) -> npt.NDArray[Any]:
    """One array (``x``: the chips, ``mask``: their per-pixel classes) of every chip, in the
    order of ``patches``; each scene's ``arrays/<scene>.npz`` read once."""
    if not patches:
        raise DatasetError("no chips to load")
    folder = dataset.path.parent.resolve()
    files: dict[str, Any] = {}
    rows = []
    for p in patches:
        name, _, index = p.href.partition("#")
        if name not in files:
            f = (folder / name).resolve()
            if not f.is_relative_to(folder):
                raise DatasetError(f"chip {p.item_id}: {name} is outside the dataset's folder")
            if not f.is_file():
                raise DatasetError(f"chip array file {f} is missing")
            with np.load(f) as npz:
                if array not in npz:
                    raise DatasetError(f"{f} has no {array!r} array; cut the chips again")
                files[name] = npz[array]
        chips = files[name]
        if not 0 <= int(index) < len(chips):
            raise DatasetError(f"chip {p.item_id}: #{index} is past the {len(chips)} in {name}")
        rows.append(chips[int(index)])
    stacked = np.stack(rows) if len({r.shape for r in rows}) == 1 else None
    if stacked is None or stacked.shape[-2:] != (dataset.size, dataset.size):
        shapes = sorted({str(r.shape) for r in rows})[:3]
        raise DatasetError(
            f"the chips' {array} arrays are {', '.join(shapes)}, not {dataset.size} x "
            f"{dataset.size} as the table's proj:shape says; cut the chips again"
        )
    if array == "x" and not np.isfinite(stacked).all():
        raise DatasetError("the chips hold NaN or infinite values; cut the chips again")
    if array == "mask":
        classes = len(dataset.classes)
        beyond = (stacked >= classes) & (stacked != UNKNOWN)
        if beyond.any():
            bad = np.unique(stacked[beyond])[:5]
            raise DatasetError(
                f"the chips' masks hold class indices {bad.tolist()} beyond the {classes} classes"
            )
    return stacked


def load(dataset: ChipDataset, patches: list[Patch]) -> PatchTensors:
    """The chips' arrays (reflectance, the card's units) and class indices."""
    import torch

    from eostream.trainer.datasets import PatchTensors

    x = torch.from_numpy(_stacked(dataset, patches, "x").astype(np.float32))
    y = torch.tensor([p.label for p in patches], dtype=torch.int64)
    return PatchTensors(x, y, tuple(p.item_id for p in patches))


def load_masks(dataset: ChipDataset, patches: list[Patch]) -> npt.NDArray[np.uint8]:
    """The chips' per-pixel masks ``[n, size, size]`` (class indices; 255: unknown or invalid),
    in the order of ``patches`` (as :func:`load`)."""
    return _stacked(dataset, patches, "mask").astype(np.uint8)
