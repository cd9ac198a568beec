"""A tile's 20 and 60 m bands under its finest grid: read by GDAL's resampling read of the
matching source window (scene._Upsampled) instead of the warper, with the warper's values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from eostream.inference import radiometry, testing
from eostream.inference.fetch import gdal_env
from eostream.inference.scene import SceneReader, _Upsampled, prepare_scene


def test_coarser_bands_of_a_real_tile_read_as_the_warper_reads_them(rkh_item: Path) -> None:
    """29RKH as the data folder has it (10 m bands at 100 m, 20 m ones at 200 m, 60 m ones at
    600 m, one origin): classified on its own grid (coarse allowed), each coarser band is
    upsampled 2x or 6x. Read in odd strips, every band equals the warper's bilinear read of the
    same file to 1 DN (the warper's own strips differ from its whole read by as much)."""
    card = testing.model_card("ms13")
    item = json.loads(rkh_item.read_text())
    plan = prepare_scene(item, str(rkh_item), card, policy="adapt", b10_fill=0.0015)
    with SceneReader(
        plan, card, gdal_env(None), max_pixels=10**8, allow_coarse=True, mask_clouds=False
    ) as reader:
        upsampled = {
            band: r.k
            for band, (r, _, _) in reader._band_readers.items()
            if isinstance(r, _Upsampled)
        }
        assert upsampled == {
            "B01": 6, "B05": 2, "B06": 2, "B07": 2, "B8A": 2, "B09": 6, "B11": 2, "B12": 2
        }  # fmt: skip
        strips = [reader.read(top, min(top + 173, reader.height))[0] for top in range(0, 1098, 173)]
        units = np.concatenate(strips, axis=1)
        transform, crs, size = reader.transform, reader.crs, (reader.height, reader.width)
    for band in upsampled:
        with rasterio.open(plan.sources[band].href.removeprefix("file://")) as ds:
            vrt = WarpedVRT(
                ds,
                crs=crs,
                transform=transform,
                width=size[1],
                height=size[0],
                resampling=Resampling.bilinear,
                nodata=ds.nodata,
            )
            with vrt:
                warped = vrt.read(1)
        expected = np.empty(warped.shape, np.float32)
        scaling = next(x for x in card.scaling if x.band == band)
        radiometry.units_into(warped, plan.radiometry[band], scaling, expected)
        one_dn = plan.radiometry[band].scale * scaling.scale
        ours = units[card.bands.index(band)]
        assert np.abs(ours - expected).max() <= one_dn * 1.001, band
        assert np.abs(ours - expected).mean() < 0.05 * one_dn, band  # nearly all equal
