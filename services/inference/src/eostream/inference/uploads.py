"""A STAC item for a raster that arrived without one (an upload, a local GeoTIFF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds

from eostream.inference.bands import band_id
from eostream.inference.errors import BadInputError, BandMismatchError, TooLargeError
from eostream.inference.fetch import open_raster

#: An upload is a GeoTIFF (COGs included): never a VRT or another format, whatever its name.
UPLOAD_DRIVERS = ("GTiff",)


def _truncated(ds: Any, size: int) -> bool:
    """Whether the header names data past the end of a ``size``-byte file (read from the TIFF
    tags: nothing is decoded)."""
    for bidx in range(1, ds.count + 1):
        bh, bw = ds.block_shapes[bidx - 1]
        for y in range(-(-ds.height // bh)):
            for x in range(-(-ds.width // bw)):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=bidx)
                length = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=bidx)
                if offset and length and int(offset) + int(length) > size:
                    return True
    return False


def describe_bands(path: Path, declared: list[str] | None, *, max_pixels: int = 0) -> list[str]:
    """The band ids of a multi-band GeoTIFF: as declared, or from its band descriptions.

    Only the header is read: a file that is not a GeoTIFF (a VRT named .tif, say), a truncated
    one, or one that declares more than ``max_pixels`` (width x height; 0 = no limit) is refused
    before any pixel is decoded. Messages never name the server's path.
    """
    try:
        with (
            rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"),
            open_raster(str(path), UPLOAD_DRIVERS) as ds,
        ):
            count, descriptions, crs = ds.count, ds.descriptions, ds.crs
            width, height = ds.width, ds.height
            truncated = _truncated(ds, path.stat().st_size)
    except RasterioError:
        raise BadInputError(
            "the upload is not a readable GeoTIFF: truncated, corrupt or another format (only "
            "GeoTIFF and COG are accepted; VRT and other formats are refused)"
        ) from None
    if truncated:
        raise BadInputError(
            "the upload is truncated or corrupt: its header names data past the end of the file"
        )
    if max_pixels and width * height > max_pixels:
        raise TooLargeError(
            f"the upload declares {width}x{height} px, more than the {max_pixels} px "
            "(width x height) allowed per request"
        )
    if crs is None:
        raise BadInputError("the raster has no CRS (unknown georeferencing); reproject it first")
    if declared:
        ids = [band_id(b) for b in declared]
        unknown = [b for b, i in zip(declared, ids, strict=True) if i is None]
        if unknown:
            raise BandMismatchError(f"unknown band name(s) {unknown}; use B01..B12, B8A")
        if len(declared) != count:
            raise BandMismatchError(
                f"{len(declared)} band names given but the raster has {count} bands"
            )
        return [i for i in ids if i is not None]
    found = [band_id(d or "") for d in descriptions]
    if any(f is None for f in found):
        raise BandMismatchError(
            "the raster's bands have no Sentinel-2 names; pass bands=B04,B03,B02 (in file order)"
        )
    return [f for f in found if f is not None]


def item_for_raster(
    path: Path,
    item_id: str,
    bands: list[str],
    *,
    level: str = "L2A",
    scale: float = 1e-4,
    offset: float = 0.0,
    when: str = "2020-01-01T00:00:00Z",
) -> dict[str, Any]:
    """A STAC item (dict) for one multi-band GeoTIFF whose band order is ``bands``."""
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise BadInputError(f"{path.name} has no CRS (unknown georeferencing)")
            west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    except RasterioError as exc:
        raise BadInputError(f"{path.name} is not a readable raster: {exc}") from None
    geometry = {
        "type": "Polygon",
        "coordinates": [
            [[west, south], [east, south], [east, north], [west, north], [west, south]]
        ],
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "bbox": [west, south, east, north],
        "geometry": geometry,
        "properties": {"datetime": when, "processing:level": level},
        "links": [],
        "assets": {
            "data": {
                "href": str(path),
                "type": "image/tiff; application=geotiff",
                "eo:bands": [{"name": b} for b in bands],
                "raster:bands": [{"scale": scale, "offset": offset} for _ in bands],
            }
        },
    }
