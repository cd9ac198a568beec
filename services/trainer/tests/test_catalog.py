"""STAC items as stac-geoparquet, built once, and DuckDB selection with a recorded split."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import duckdb
import pytest

from eostream.shared.holdout import DEFAULT_PER_CLASS, DEFAULT_SALT, held_out_files
from eostream.shared.modelcard import EUROSAT_CLASSES
from eostream.trainer.cards import card_scaling
from eostream.trainer.catalog import CatalogTable, build_catalog
from eostream.trainer.errors import DatasetError
from eostream.trainer.selection import (
    SPATIAL_CELL_METRES,
    SelectionSpec,
    exclusion_key,
    gate_exclusion,
    select,
    split_fraction,
    split_name,
)

from .conftest import make_settings


def test_ms_items_carry_label_and_projection(ms_table: CatalogTable, data_dir: Path) -> None:
    assert ms_table.count == 375  # 376 manifest rows, one duplicate
    rows = duckdb.execute(
        'SELECT id, class, "label:properties", "label:classes", "proj:code", bbox, '
        "assets.image.href FROM read_parquet(?) WHERE id = 'eurosat-ms13-Forest_1'",
        [str(ms_table.path)],
    ).fetchall()
    ((_id, cls, label_props, label_classes, code, bbox, href),) = rows
    assert cls == "Forest" and label_props == ["class"]
    assert tuple(label_classes[0]["classes"]) == EUROSAT_CLASSES
    assert code.startswith("EPSG:326")
    assert 5 < bbox["xmin"] < bbox["xmax"] < 30 and 35 < bbox["ymin"] < bbox["ymax"] < 60
    assert (data_dir / href).is_file()


def test_rgb_catalog_is_complete_and_cached(
    rgb_table: CatalogTable, data_dir: Path, trainer_cache: Path
) -> None:
    assert rgb_table.count == 27_000
    counts = dict(
        duckdb.execute(
            "SELECT class, count(*) FROM read_parquet(?) GROUP BY class", [str(rgb_table.path)]
        ).fetchall()
    )
    assert counts["Pasture"] == 2000 and counts["Forest"] == 3000
    # un-georeferenced: NaN bbox, never an invented place
    ((bbox,),) = duckdb.execute(
        "SELECT bbox FROM read_parquet(?) LIMIT 1", [str(rgb_table.path)]
    ).fetchall()
    assert all(math.isnan(v) for v in bbox.values())
    mtime = rgb_table.path.stat().st_mtime_ns
    again = build_catalog(data_dir, trainer_cache, "rgb")
    assert again == rgb_table and again.path.stat().st_mtime_ns == mtime  # built once


@pytest.fixture
def kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own machine cache: where derived EuroSAT files are kept for the next home."""
    monkeypatch.setenv("EOSTREAM_CACHE", str(tmp_path / "machine"))
    return tmp_path / "machine" / "eurosat"


def test_a_new_cache_folder_copies_the_table_this_machine_built(
    data_dir: Path, tmp_path: Path, kept: Path, caplog: pytest.LogCaptureFixture
) -> None:
    built = build_catalog(data_dir, tmp_path / "home-a", "ms13")
    assert (kept / built.path.name).read_bytes() == built.path.read_bytes()
    with caplog.at_level(logging.INFO, logger="eostream.trainer.catalog"):
        copied = build_catalog(data_dir, tmp_path / "home-b", "ms13")
    assert "copied this machine's" in caplog.text and "as stac-geoparquet" not in caplog.text
    assert copied.path == tmp_path / "home-b" / "stac" / built.path.name
    assert (copied.digest, copied.count) == (built.digest, 375)
    assert copied.path.read_bytes() == built.path.read_bytes()
    # a damaged copy is never trusted: the table is built again, and the copy mended
    (kept / built.path.name).write_bytes(b"not a parquet file")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eostream.trainer.catalog"):
        rebuilt = build_catalog(data_dir, tmp_path / "home-c", "ms13")
    assert "built 375 EuroSAT ms13 STAC items" in caplog.text
    assert rebuilt.count == 375
    assert (kept / built.path.name).read_bytes() == rebuilt.path.read_bytes()


def test_random_split_is_deterministic_and_recorded(rgb_table: CatalogTable) -> None:
    spec = SelectionSpec("rgb", classes=("Forest", "River"), samples_per_class=300, seed=7)
    first, second = select(rgb_table, spec), select(rgb_table, spec)
    assert first.patches == second.patches and first.digest == second.digest
    assert {p.class_name for p in first.patches} == {"Forest", "River"}
    assert sum(p.class_name == "Forest" for p in first.patches) == 300
    for p in first.patches:  # the SQL split equals the documented formula
        assert p.split == split_name(split_fraction(p.item_id, 7), 0.7, 0.15)
    counts = first.counts()
    assert 0.6 < counts["train"] / 600 < 0.8 and counts["test"] > 50
    other = select(
        rgb_table, SelectionSpec("rgb", classes=("Forest", "River"), samples_per_class=300, seed=8)
    )
    assert other.digest != first.digest


def test_the_gates_held_out_patches_are_never_trained_on(
    rgb_table: CatalogTable, data_dir: Path
) -> None:
    held_out = held_out_files(data_dir, "rgb", DEFAULT_PER_CLASS, DEFAULT_SALT)
    assert len(held_out) == 10 * DEFAULT_PER_CLASS
    keys = gate_exclusion(rgb_table, held_out)
    assert len(keys) == len(held_out)
    full = select(rgb_table, SelectionSpec("rgb", seed=3))
    kept = select(rgb_table, SelectionSpec("rgb", seed=3, exclude=keys))
    in_full = {exclusion_key(p.class_name, p.href) for p in full.patches}
    in_kept = {exclusion_key(p.class_name, p.href) for p in kept.patches}
    assert set(keys) <= in_full  # the keys name real patches of the table...
    assert not set(keys) & in_kept  # ...and none of them is in any split
    assert len(kept.patches) == len(full.patches) - len(keys)
    assert kept.digest != full.digest  # the exclusion is part of the recorded selection
    # a per-class limit is filled from the remaining patches
    limited = select(rgb_table, SelectionSpec("rgb", samples_per_class=50, exclude=keys))
    assert len(limited.patches) == 500
    assert not {exclusion_key(p.class_name, p.href) for p in limited.patches} & set(keys)


def test_a_held_out_set_too_big_for_the_data_is_trained_on_and_said_so(
    ms_table: CatalogTable, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the local EuroSAT MS set holds about 27 patches a class: the default 30 would take them all
    held_out = held_out_files(data_dir, "ms13", DEFAULT_PER_CLASS, DEFAULT_SALT)
    assert gate_exclusion(ms_table, held_out) == ()
    assert "the gate's scores of this model are optimistic" in caplog.text
    small = held_out_files(data_dir, "ms13", 5, DEFAULT_SALT)
    assert len(gate_exclusion(ms_table, small)) == 50


def test_spatial_split_keeps_neighbours_together(ms_table: CatalogTable, data_dir: Path) -> None:
    selection = select(ms_table, SelectionSpec("ms13", split="spatial"))
    with (data_dir / "eurosat_ms" / "MANIFEST.csv").open() as f:
        cells = {
            f"eurosat-ms13-{Path(r['path']).stem}": (
                r["epsg"],
                math.floor(float(r["minx"]) / SPATIAL_CELL_METRES),
                math.floor(float(r["miny"]) / SPATIAL_CELL_METRES),
            )
            for r in csv.DictReader(f)
            if not r["duplicate_of"]
        }
    split_of_cell: dict[tuple[str, int, int], set[str]] = {}
    for p in selection.patches:
        split_of_cell.setdefault(cells[p.item_id], set()).add(p.split)
    assert all(len(s) == 1 for s in split_of_cell.values())
    assert any(
        len([p for p in selection.patches if cells[p.item_id] == c]) > 1 for c in split_of_cell
    )  # some cells really group several patches


def test_rgb_grouped_split_uses_index_blocks(rgb_table: CatalogTable) -> None:
    selection = select(rgb_table, SelectionSpec("rgb", classes=("SeaLake",), split="spatial"))
    blocks: dict[int, set[str]] = {}
    for p in selection.patches:
        blocks.setdefault(int(p.item_id.rsplit("_", 1)[1]) // 100, set()).add(p.split)
    assert all(len(s) == 1 for s in blocks.values())


def test_bad_selections_are_refused(ms_table: CatalogTable, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown classes"):
        SelectionSpec("ms13", classes=("Desert",))
    with pytest.raises(DatasetError, match="no EuroSAT RGB data"):
        build_catalog(tmp_path, tmp_path, "rgb")
    with pytest.raises(DatasetError, match="leaves no patches"):
        select(ms_table, SelectionSpec("ms13", classes=("Forest",), samples_per_class=1))


def test_the_rgb_scaling_fit_is_kept_for_the_next_cache_folder(
    data_dir: Path, tmp_path: Path, kept: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_settings(data_dir, tmp_path / "home-a", "sqlite:///unused.db")
    fitted = card_scaling("rgb", first)  # fitted on the 375 MS/RGB pairs, ~6 s
    assert [s.band for s in fitted] == ["B04", "B03", "B02"]
    (fit,) = kept.glob("rgb-scaling-*.json")
    with caplog.at_level(logging.INFO, logger="eostream.trainer.catalog"):
        copied = card_scaling("rgb", make_settings(data_dir, tmp_path / "home-b", "sqlite://"))
    assert copied == fitted and f"copied this machine's {fit}" in caplog.text
    assert (tmp_path / "home-b" / "scaling" / fit.name).read_bytes() == fit.read_bytes()
