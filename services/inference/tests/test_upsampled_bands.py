"""A tile's 20 and 60 m bands under its finest grid: read by GDAL's resampling read of the
matching source window (scene._Upsampled) instead of the warper, with the warper's values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from eostream.inference import radiometry, testing
from eostream.inference.fetch import gdal_env
from eostream.inference.scene import SceneReader, _Upsampled, is_nodata, prepare_scene


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


def test_nodata_stays_where_the_warper_puts_it(tmp_path: Path) -> None:
    """A 20 and a 60 m band with nodata holes (a swath edge, a lone defective pixel) under a
    10 m grid: in odd strips the upsampled read marks nodata exactly where the warper does (a
    pixel whose coarse pixel is nodata) and elsewhere gives its values to 1 DN away from the
    holes; beside them both interpolate from the valid neighbours only (weighted differently),
    never pulling a value towards the nodata 0."""
    size = 600
    fine = from_origin(300_000, 5_000_040, 10, 10)
    rng = np.random.default_rng(7)
    for k in (2, 6):
        n = size // k
        data = rng.integers(5_000, 10_000, (n, n)).astype(np.uint16)
        data[:, :9] = 0  # a swath edge
        data[40, 30] = 0  # a defective pixel
        data[n - 3 :, n - 5 :] = 0  # a corner at the bottom right
        path = tmp_path / f"coarse-{k}.tif"
        profile = {
            "driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "uint16",
            "crs": "EPSG:32631", "transform": from_origin(300_000, 5_000_040, 10 * k, 10 * k),
            "nodata": 0, "tiled": True, "blockxsize": 64, "blockysize": 64,
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        with rasterio.open(path) as ds:
            vrt = WarpedVRT(
                ds,
                crs=ds.crs,
                transform=fine,
                width=size,
                height=size,
                resampling=Resampling.bilinear,
                nodata=0,
            )
            with vrt:
                warped = vrt.read(1).astype(np.int64)
            reader = _Upsampled(ds, k)
            ours = np.concatenate(
                [
                    reader.read(1, Window(0, top, size, min(113, size - top)))
                    for top in range(0, size, 113)
                ]
            ).astype(np.int64)
        assert ((warped == 0) == (ours == 0)).all(), k
        assert (ours == 0).sum() >= 9 * k * size  # the holes are there
        valid = warped != 0
        near = np.zeros_like(valid)
        for dy in range(-k, k + 1):  # within a coarse pixel of a hole
            for dx in range(-k, k + 1):
                near |= np.roll(np.roll(~valid, dy, axis=0), dx, axis=1)
        diff = np.abs(ours - warped)
        assert diff[valid & ~near].max() <= 1, k
        assert ours[valid].min() >= 5_000 and warped[valid].min() >= 5_000, k  # no 0 leaks in


def test_a_nan_nodata_is_nodata() -> None:
    """A float raster's NaN nodata, which ``==`` never matches (it went into the model)."""
    values = np.array([1.0, np.nan, 0.0], np.float32)
    assert is_nodata(values, float("nan")).tolist() == [False, True, False]
    assert is_nodata(values, 0.0).tolist() == [False, False, True]
    assert is_nodata(np.array([0, 7], np.uint16), 0).tolist() == [True, False]
