"""The Sentinel-2 facts ingest and inference share: band names, band sources, level, baseline,
reflectance rule (ADR 0010). Real items from the data folder where the rule is about providers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eostream.shared import sentinel2


def _item(data_dir: Path, rel: str) -> dict[str, Any]:
    item: dict[str, Any] = json.loads((data_dir / rel).read_text())
    return item


@pytest.mark.parametrize(
    ("name", "band"),
    [
        ("blue", "B02"),
        ("B2", "B02"),
        ("b04", "B04"),
        ("B08A", "B8A"),
        ("b8a", "B8A"),
        ("nir08", "B8A"),
        ("red-jp2", "B04"),
        ("blue_20m", "B02"),
        ("scl", None),
        ("B13", None),
        ("TCI", None),
        ("visual", None),
    ],
)
def test_band_names_fold_to_band_ids(name: str, band: str | None) -> None:
    assert sentinel2.band_id(name) == band


def test_cogs_win_over_jp2_and_single_band_files_over_multi_band_ones() -> None:
    assets = {
        "red-jp2": {"href": "B04.jp2", "type": "image/jp2"},
        "stack": {"href": "s.tif", "eo:bands": [{"name": "B04"}, {"name": "B03"}]},
        "red": {"href": "B04.tif", "type": "image/tiff"},
        "visual": {"href": "TCI.tif", "eo:bands": [{"name": "B04"}, {"name": "B03"}]},
        "green-jp2": {"href": "B03.jp2"},
    }
    found, missing = sentinel2.band_sources(assets, ("B04", "B03", "B02"))
    assert (found["B04"].asset_key, found["B03"].asset_key) == ("red", "stack")
    assert found["B03"].index == 2
    assert missing == ["B02"]


def test_a_jp2_only_item_still_has_its_bands(data_dir: Path) -> None:
    item = _item(
        data_dir, "sentinel2_stac/stactools_sentinel2_examples/S2A_T01LAC_20200717T221944_L1C.json"
    )
    found, missing = sentinel2.band_sources(item["assets"])
    assert not missing and found["B02"].asset_key == "blue"
    assert sentinel2.bands_of(item) == sentinel2.EVENT_ORDER


def test_the_native_resolution_wins_over_resamplings_listed_first(data_dir: Path) -> None:
    """stactools' L2A items list ``blue_20m`` and ``blue_60m`` before the 10 m ``blue``: an RGB
    model read the scene on a 20 m grid."""
    item = _item(
        data_dir, "sentinel2_stac/stactools_sentinel2_examples/S2A_T07HFE_20190212T192646_L2A.json"
    )
    found, missing = sentinel2.band_sources(item["assets"])
    assert missing == ["B10"]  # L2A
    assert {b: found[b].asset_key for b in ("B02", "B03", "B04", "B08", "B05", "B01")} == {
        "B02": "blue",
        "B03": "green",
        "B04": "red",
        "B08": "nir",
        "B05": "rededge1",  # 20 m native, before its rededge1_60m
        "B01": "coastal",
    }
    # a resolution in the key alone counts too, and format still comes first
    assets = {
        "red_20m": {"href": "r20.tif"},
        "red-jp2": {"href": "r.jp2", "gsd": 10},
        "red_cog": {"href": "r10.tif", "raster:bands": [{"spatial_resolution": 10}]},
    }
    assert sentinel2.band_sources(assets, ("B04",))[0]["B04"].asset_key == "red_cog"


@pytest.mark.parametrize(
    ("rel", "level", "baseline"),
    [
        ("sentinel2_stac/earth_search_v0/S2A_28QCH_20200714_0_L2A.json", "L2A", "02.14"),
        ("sentinel2_stac/planetary_computer/sentinel-2-item.json", "L2A", "04.00"),
        (
            "sentinel2_stac/stactools_sentinel2_examples/S2A_T01LAC_20200717T221944_L1C.json",
            "L1C",
            "02.09",
        ),
    ],
)
def test_level_and_baseline_of_real_items(
    data_dir: Path, rel: str, level: str, baseline: str
) -> None:
    item = _item(data_dir, rel)
    assert sentinel2.processing_level(item) == level
    assert sentinel2.processing_baseline(item) == baseline


def test_the_item_id_is_a_level_clue_and_silence_is_none() -> None:
    assert sentinel2.processing_level({"id": "S2B_MSIL1C_20240101T000000"}) == "L1C"
    assert sentinel2.processing_level({"properties": {"processing:level": "L2A"}}) == "L2A"
    assert sentinel2.processing_level({"id": "patch-1", "properties": {}}) is None


@pytest.mark.parametrize(
    ("baseline", "offset", "source"),
    [
        ("02.14", 0.0, "baseline<04.00"),
        ("04.00", -0.1, "baseline>=04.00"),
        ("05.10", -0.1, "baseline>=04.00"),
        (None, 0.0, "default"),
        ("n/a", 0.0, "default"),
    ],
)
def test_baseline_offset(baseline: str | None, offset: float, source: str) -> None:
    r = sentinel2.baseline_radiometry(baseline)
    assert r.scale == pytest.approx(1e-4) and r.offset == pytest.approx(offset)
    assert r.source == source


def test_raster_bands_win_over_the_baseline() -> None:
    asset = {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}
    assert sentinel2.asset_radiometry(asset, 1, "02.14").offset == pytest.approx(-0.1)
    assert sentinel2.asset_radiometry(asset, 2, "02.14").source == "baseline<04.00"
