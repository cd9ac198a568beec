"""Band order: B8A is the LAST band of a EuroSAT MS GeoTIFF; models read bands by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from eostream.shared.modelcard import BAND_SETS
from eostream.trainer.bands import band_set_bands, file_indices
from eostream.trainer.datasets import read_ms
from eostream.trainer.errors import BadTrainingRequestError

TIF = "eurosat_ms/eotdl_small/Forest/Forest_1.tif"


def test_band_positions() -> None:
    assert file_indices(BAND_SETS["rgb"]) == [3, 2, 1]
    assert file_indices(["B8A", "B08", "B09"]) == [12, 7, 8]
    assert file_indices(BAND_SETS["ms13"]) == list(range(13))
    with pytest.raises(ValueError, match="B99"):
        file_indices(["B99"])
    with pytest.raises(BadTrainingRequestError, match="unknown band set"):
        band_set_bands("hyperspectral")


def test_read_ms_picks_bands_by_name(data_dir: Path) -> None:
    with rasterio.open(data_dir / TIF) as src:
        raw = src.read().astype(np.float32) / 10000
    np.testing.assert_array_equal(read_ms(data_dir / TIF, ["B8A"])[0], raw[12])
    np.testing.assert_array_equal(read_ms(data_dir / TIF, BAND_SETS["rgb"]), raw[[3, 2, 1]])
    # the data agree: B8A (narrow NIR) is close to B07/B08, far from B10 (cirrus, ~0.001)
    b07, b10, b8a = raw[6].mean(), raw[9].mean(), raw[12].mean()
    assert abs(b8a - b07) < 0.5 * b07 and b10 < 0.01 < b8a
