"""Choosing a training set from the stac-geoparquet table with DuckDB, and splitting it.

The split is deterministic and recorded: a patch's split comes from the MD5 of its *group key*
and the seed, mapped to [0, 1) and cut at the train/validation fractions. The same formula is
written once in SQL (what selects) and once in Python (:func:`split_fraction`, what tests and
readers use to check a recorded split).

* ``random``: the group key is the Item id, so every patch is drawn on its own. Neighbouring
  EuroSAT patches look alike, so this split flatters accuracy.
* ``spatial``: patches that lie close together share a group and therefore a split.
  MS patches are georeferenced: the group is the 20 km grid cell of the patch's lower-left corner
  in its UTM zone. RGB JPEGs carry no georeference at all; for them the group is a block of 100
  consecutive patch numbers within a class. Nothing published says EuroSAT's numbering follows
  space, so for RGB this is a *grouped* hold-out, not a proven spatial one.

A model fine-tuned from a base model keeps the patches the base trained on in train, with the
rest of their groups (``train_only``, read from the base run's recorded split): whatever the new
seed or split, its validation and test patches are unseen by both, and a spatial split stays
whole.

Before any split, the registry-bridge's gate hold-out (:mod:`eostream.shared.holdout`) is left
out (:func:`gate_exclusion`), so the gate never scores a model on patches it learned from, unless
that would take half or more of some class (the small EuroSAT MS set here); then the overlap is
logged and recorded on the run and the version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal

from eostream.shared.holdout import HoldoutSettings, held_out_files
from eostream.shared.modelcard import EUROSAT_CLASSES
from eostream.trainer.catalog import CatalogTable
from eostream.trainer.errors import DatasetError

log = logging.getLogger(__name__)

SplitMode = Literal["random", "spatial"]
SPLITS = ("train", "val", "test")
SPATIAL_CELL_METRES = 20_000
RGB_INDEX_BLOCK = 100


@dataclass(frozen=True)
class SelectionSpec:
    band_set: str
    classes: tuple[str, ...] = EUROSAT_CLASSES
    samples_per_class: int | None = None
    split: SplitMode = "random"
    seed: int = 42
    train_fraction: float = 0.7
    val_fraction: float = 0.15
    exclude: tuple[str, ...] = ()  # "Class/file name" keys left out of every split
    #: "Class/file stem" keys whose groups go to train whatever they draw: the patches a base
    #: model trained on (:func:`training_keys`), never scored as unseen, nor their neighbours
    train_only: tuple[str, ...] = ()
    #: the classes the table knows (EuroSAT's; a chip dataset's own, see trainer/chipset.py)
    vocabulary: tuple[str, ...] = EUROSAT_CLASSES

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in self.vocabulary]
        if unknown or not self.classes:
            raise DatasetError(f"unknown classes {unknown}; choose from {list(self.vocabulary)}")
        if not (0 < self.train_fraction < 1 and 0 < self.val_fraction < 1):
            raise DatasetError("train and validation fractions must lie strictly between 0 and 1")
        if self.train_fraction + self.val_fraction >= 1:
            raise DatasetError("train + validation fractions must leave room for a test split")


@dataclass(frozen=True)
class Patch:
    item_id: str
    class_name: str
    label: int  # index in the table's classes (EUROSAT_CLASSES for EuroSAT)
    href: str  # relative to the data folder
    split: str


@dataclass(frozen=True)
class Selection:
    spec: SelectionSpec
    table: CatalogTable
    patches: tuple[Patch, ...]
    digest: str
    sql: str

    def of(self, split: str) -> list[Patch]:
        return [p for p in self.patches if p.split == split]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for p in self.patches if p.split == s) for s in SPLITS}


def split_fraction(group_key: str, seed: int) -> float:
    """Where a group falls in [0, 1): the first 32 bits of MD5("key:seed")."""
    digest = hashlib.md5(f"{group_key}:{seed}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) / 2**32


def split_name(fraction: float, train_fraction: float, val_fraction: float) -> str:
    if fraction < train_fraction:
        return "train"
    if fraction < train_fraction + val_fraction:
        return "val"
    return "test"


def group_key_sql(band_set: str, mode: SplitMode) -> str:
    if mode == "random":
        return "id"
    if band_set == "rgb":
        return f"class || ':' || CAST(patch_index // {RGB_INDEX_BLOCK} AS VARCHAR)"
    cell = SPATIAL_CELL_METRES
    return (
        f"\"proj:code\" || ':' || CAST(floor(\"proj:bbox\"[1] / {cell}) AS VARCHAR) || ':' || "
        f'CAST(floor("proj:bbox"[2] / {cell}) AS VARCHAR)'
    )


def _fraction_sql(expr: str, seed: int) -> str:
    return f"(('0x' || substr(md5(({expr}) || ':{int(seed)}'), 1, 8))::UBIGINT / 4294967296.0)"


def build_sql(table: CatalogTable, spec: SelectionSpec) -> tuple[str, dict[str, object]]:
    """The DuckDB query that selects, limits per class and splits (parameters separate)."""
    group = group_key_sql(spec.band_set, spec.split)
    limit = "" if spec.samples_per_class is None else "WHERE rank_in_class <= $per_class"
    # Only code-made SQL is interpolated (the group expression, an int seed); values are bound.
    sql = f"""
        WITH chosen AS (
            SELECT id, class, class_index, assets.image.href AS href,
                   {group} AS group_key,
                   row_number() OVER (
                       PARTITION BY class ORDER BY {_fraction_sql("id", spec.seed + 1)}, id
                   ) AS rank_in_class
            FROM read_parquet($path)
            WHERE list_contains($classes, class)
              AND NOT list_contains($exclude, class || '/' || parse_filename(assets.image.href))
        )
        SELECT id, class, class_index, href,
               CASE WHEN f < $train OR forced THEN 'train' WHEN f < $train_val THEN 'val'
                    ELSE 'test' END AS split
        FROM (
            SELECT *, {_fraction_sql("group_key", spec.seed)} AS f,
                   -- a group holding a patch a base model trained on goes to train whole
                   bool_or(list_contains($train_only, class || '/' || parse_filename(href, true)))
                       OVER (PARTITION BY group_key) AS forced
            FROM chosen {limit}
        )
        ORDER BY id
    """  # noqa: S608
    params: dict[str, object] = {
        "path": str(table.path),
        "classes": list(spec.classes),
        "exclude": list(spec.exclude),
        "train_only": list(spec.train_only),
        "train": spec.train_fraction,
        "train_val": spec.train_fraction + spec.val_fraction,
    }
    if spec.samples_per_class is not None:
        params["per_class"] = spec.samples_per_class
    return sql, params


def select(table: CatalogTable, spec: SelectionSpec) -> Selection:
    import duckdb

    if table.band_set != spec.band_set:
        raise DatasetError(
            f"table holds {table.band_set} patches, the request wants {spec.band_set}"
        )
    sql, params = build_sql(table, spec)
    with duckdb.connect() as con:
        rows = con.execute(sql, params).fetchall()
    patches = tuple(Patch(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows)
    selection = Selection(spec, table, patches, _digest(table, spec, patches), sql)
    counts = selection.counts()
    empty = [s for s in SPLITS if counts[s] == 0]
    if empty:
        raise DatasetError(
            f"the selection leaves no patches in {empty} ({counts}); ask for more samples per "
            "class or other fractions"
        )
    return selection


def exclusion_key(class_name: str, href: str) -> str:
    return f"{class_name}/{PurePosixPath(href).name}"


def place_key(class_name: str, href: str) -> str:
    """A EuroSAT place as "Class/file stem": the same for its RGB JPEG and its 13-band tif."""
    return f"{class_name}/{PurePosixPath(href).stem}"


def training_keys(
    rows: Sequence[Mapping[str, str]], splits: Sequence[str] = ("train",)
) -> tuple[str, ...]:
    """The "Class/file stem" keys of the rows of a run's ``dataset/split.csv`` (columns
    ``class``, ``href``, ``split``) in ``splits``: the same place whether the run read its RGB
    JPEG or its 13-band tif, so a model widened from RGB to ms13 is not scored on patches it
    saw."""
    keys = {place_key(r["class"], r["href"]) for r in rows if r["split"] in splits}
    return tuple(sorted(keys))


def gate_exclusion(table: CatalogTable, held_out: Sequence[str]) -> tuple[str, ...]:
    """The keys of the gate's ``held_out`` files (paths relative to the data folder, the class
    folder holding each) to leave out of training; ``()`` when that would leave some class with
    no more patches than it gives up."""
    import duckdb

    keys = tuple(sorted(exclusion_key(PurePosixPath(f).parent.name, f) for f in held_out))
    with duckdb.connect() as con:
        sizes = dict(
            con.execute(
                "SELECT class, count(*) FROM read_parquet($path) GROUP BY class",
                {"path": str(table.path)},
            ).fetchall()
        )
    taken = Counter(key.split("/", 1)[0] for key in keys)
    starved = {c: f"{n} of {sizes.get(c, 0)}" for c, n in taken.items() if 2 * n >= sizes.get(c, 0)}
    if starved:
        log.warning(
            "the gate's held-out set would take half or more of some %s classes (%s): training "
            "on it anyway, so the gate's scores of this model are optimistic",
            table.band_set,
            ", ".join(f"{c} {v}" for c, v in sorted(starved.items())),
        )
        return ()
    return keys


def select_for_training(
    table: CatalogTable, spec: SelectionSpec, data_dir: Path, gate: HoldoutSettings
) -> Selection:
    """:func:`select` with the gate's held-out files under ``data_dir`` left out (what the
    pipeline trains on; tests that check a registered version's selection use it too)."""
    held_out = held_out_files(data_dir, spec.band_set, gate.per_class, gate.salt)
    return select(table, replace(spec, exclude=gate_exclusion(table, held_out)))


def _digest(table: CatalogTable, spec: SelectionSpec, patches: tuple[Patch, ...]) -> str:
    h = hashlib.sha256(table.digest.encode())
    fields = asdict(spec)
    if spec.vocabulary == EUROSAT_CLASSES:  # EuroSAT digests stay what they were
        del fields["vocabulary"]
    if not spec.train_only:  # and so do those of models trained from scratch
        del fields["train_only"]
    h.update(json.dumps(fields, sort_keys=True).encode())
    for p in patches:
        h.update(f"{p.item_id}\t{p.label}\t{p.split}\n".encode())
    return h.hexdigest()
