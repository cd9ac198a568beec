"""Which EuroSAT files are which: the MS manifest the trainer trains on and the bridge calibrates
on (one reader for both), and the tifs the hold-out is drawn from."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from eostream.shared.holdout import MS_MANIFEST, ms_candidates, ms_manifest_rows

#: the columns of the data folder's eurosat_ms/MANIFEST.csv
COLUMNS = (
    "path,class_name,source_repo,source_split,sha256,bytes,matches_independent_sha256,"
    "duplicate_of,epsg,res_x,res_y,minx,miny,maxx,maxy"
).split(",")


def write_manifest(data_dir: Path, rows: list[dict[str, str]]) -> None:
    path = data_dir / MS_MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def row(path: str, class_name: str, duplicate_of: str = "") -> dict[str, str]:
    return {"path": path, "class_name": class_name, "duplicate_of": duplicate_of, "bytes": "1"}


def test_manifest_rows_leave_out_duplicates_and_unknown_classes(tmp_path: Path) -> None:
    write_manifest(
        tmp_path,
        [
            row("eurosat_ms/a/River/River_7.tif", "River"),
            row(
                "eurosat100_stac/b/River_7.tif",
                "River",
                duplicate_of="eurosat_ms/a/River/River_7.tif",
            ),
            row("eurosat_ms/a/Clouds/Clouds_1.tif", "Clouds"),
            row("eurosat100_stac/b/Forest_3.tif", "Forest"),
        ],
    )
    assert [r["path"] for r in ms_manifest_rows(tmp_path)] == [
        "eurosat_ms/a/River/River_7.tif",
        "eurosat100_stac/b/Forest_3.tif",
    ]


def test_no_manifest_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ms_manifest_rows(tmp_path)


def test_the_data_folders_manifest(data_dir: Path) -> None:
    rows = ms_manifest_rows(data_dir)
    with (data_dir / MS_MANIFEST).open(newline="") as f:
        every = list(csv.DictReader(f))
    duplicates = [r for r in every if r["duplicate_of"]]
    assert duplicates  # the data folder has one: a EuroSAT100 tif that is also under eurosat_ms
    assert len(rows) == len(every) - len(duplicates)
    assert all((data_dir / r["path"]).is_file() for r in rows)
    # the hold-out's candidates are the tifs under eurosat_ms, one per class and name
    under_ms = {r["path"] for r in rows if r["path"].startswith("eurosat_ms/")}
    assert {f for names in ms_candidates(data_dir).values() for f in names} <= under_ms
