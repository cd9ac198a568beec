"""Pure decisions: band mapping, radiometric harmonisation, level policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eostream.inference import bands, radiometry
from eostream.inference.errors import BandMismatchError, LevelMismatchError
from eostream.inference.levels import decide, scene_level
from eostream.shared.modelcard import BAND_SETS, BandScaling


def test_band_aliases_fold_to_band_ids() -> None:
    assert [bands.band_id(n) for n in ("red", "nir08", "B8A", "b4", "B04", "swir22", "TCI")] == [
        "B04",
        "B8A",
        "B8A",
        "B04",
        "B04",
        "B12",
        None,
    ]


def test_real_item_maps_every_ms13_band_but_b10(rkh_item: Path) -> None:
    item = json.loads(rkh_item.read_text())
    found, missing = bands.map_bands(item["assets"], BAND_SETS["ms13"])
    assert missing == ["B10"]
    assert found["B8A"].href.endswith("B8A.tif") and found["B08"].href.endswith("B08.tif")
    assert found["B02"].asset_key == "blue"  # the COG, not the jp2 or the 8-bit visual asset
    assert bands.scl_href(item["assets"]) is not None


def test_multiband_asset_keeps_file_order() -> None:
    order = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    assets = {"data": {"href": "x.tif", "eo:bands": [{"name": b} for b in order]}}
    found, missing = bands.map_bands(assets, ("B04", "B03", "B02", "B8A", "B09"))
    assert not missing
    assert [found[b].index for b in ("B04", "B03", "B02", "B8A", "B09")] == [4, 3, 2, 9, 10]


@pytest.mark.parametrize(
    ("baseline", "offset"),
    [("02.14", 0.0), ("03.01", 0.0), ("04.00", -0.1), ("05.09", -0.1), (None, 0.0)],
)
def test_baseline_offset(baseline: str | None, offset: float) -> None:
    r = radiometry.from_baseline(baseline)
    assert r.scale == pytest.approx(1e-4) and r.offset == pytest.approx(offset)


def test_raster_bands_win_over_the_baseline() -> None:
    asset = {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}
    assert radiometry.for_asset(asset, 1, "02.14").offset == pytest.approx(-0.1)
    assert radiometry.for_asset({}, 1, "04.00").source == "baseline>=04.00"


def test_dn_to_model_units_harmonises_and_clips() -> None:
    rad = radiometry.from_baseline("04.00")
    units = radiometry.to_units(
        np.array([1000, 3000, 40000], np.uint16),
        rad,
        BandScaling(band="B04", scale=10000, clip_max=20000),
    )
    assert units.tolist() == pytest.approx([0.0, 2000.0, 20000.0], abs=1e-3)


def test_scl_cloud_classes() -> None:
    mask = radiometry.cloud_mask(np.array([0, 3, 4, 8, 9, 10, 11], np.uint8))
    assert mask.tolist() == [False, True, False, True, True, True, False]


def test_scene_level_from_properties() -> None:
    assert scene_level({"s2:product_type": "S2MSI2A"}, None) == "L2A"
    assert scene_level({}, "sentinel-2-l1c") == "L1C"
    assert scene_level({}, None) is None


def test_level_policy_adapts_and_says_so() -> None:
    d = decide("L1C", "L2A", "adapt", ["B10"])
    assert d.adapted and d.fill_bands == ("B10",)
    props = d.properties()
    assert props["eostream:level_mismatch"].startswith("adapt")
    assert any("B10" in n for n in props["eostream:adaptations"])


def test_level_policy_refuses_when_told() -> None:
    with pytest.raises(LevelMismatchError, match="refuse"):
        decide("L1C", "L2A", "refuse", [])


def test_missing_bands_other_than_b10_are_refused() -> None:
    with pytest.raises(BandMismatchError, match="B03"):
        decide("L1C", "L2A", "adapt", ["B03", "B10"])
    with pytest.raises(BandMismatchError, match="B10"):
        decide("L1C", "L1C", "adapt", ["B10"])  # an L1C scene must have B10
