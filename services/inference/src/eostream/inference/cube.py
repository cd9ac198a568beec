"""An area's result maps stacked into a data cube (``time, y, x``), written as zarr that plain
xarray reads (``xr.open_zarr``), without eostream.

The grid is the first map's CRS and pixel size, cut to the area's bounds (and to where the maps
are), on the first map's pixel lattice; maps on another grid are warped onto it (nearest). The
maps of one acquisition date are mosaicked (the first labelled pixel wins); pixels outside the
area (centre outside the geometry) are nodata.

CF conventions: ``classification`` (uint8) carries ``flag_values`` / ``flag_meanings`` (the
class legend), ``flag_colors``, ``_FillValue`` 255 and ``grid_mapping: spatial_ref``; the scalar
``spatial_ref`` carries ``crs_wkt`` (and ``spatial_ref``, ``GeoTransform`` in GDAL's order, as
GDAL and rioxarray write them); ``x`` and ``y`` are pixel centres in the CRS's units. xarray
decodes the fill value to NaN (a float array); ``mask_and_scale=False`` keeps the uint8 labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.features import geometry_mask
from rasterio.io import MemoryFile
from rasterio.warp import Resampling, reproject, transform_bounds, transform_geom

from eostream.inference import areas, writer
from eostream.inference.engine import NODATA, UNCERTAIN
from eostream.inference.errors import BadInputError

#: cells (time x y x) a cube may hold: its labels are one byte each, and building it holds about
#: three times that at the peak (the stack, a warped map, the area mask)
MAX_CELLS = 500_000_000


@dataclass(frozen=True)
class Map:
    """One result map: its acquisition date, result id, classes and COG bytes."""

    date: date
    result_id: str
    classes: tuple[str, ...]
    cog: bytes


@dataclass(frozen=True)
class Grid:
    crs: CRS
    transform: Affine
    height: int
    width: int


def _open(cog: bytes) -> Any:
    return MemoryFile(cog)


def target_grid(maps: Sequence[Map], geometry: areas.Geometry) -> Grid:
    """The first map's lattice over the area's bounds, cut to the maps' union."""
    with _open(maps[0].cog) as mem, mem.open() as ds:
        crs, transform = ds.crs, ds.transform
    local = transform_geom("EPSG:4326", crs, areas.densify(geometry))
    left, bottom, right, top = areas.geometry_bbox(local)
    bounds = []
    for item in maps:
        with _open(item.cog) as mem, mem.open() as ds:
            same = ds.crs == crs
            bounds.append(tuple(ds.bounds) if same else transform_bounds(ds.crs, crs, *ds.bounds))
    union = [min(b[0] for b in bounds), min(b[1] for b in bounds)]
    union += [max(b[2] for b in bounds), max(b[3] for b in bounds)]
    left, bottom = max(left, union[0]), max(bottom, union[1])
    right, top = min(right, union[2]), min(top, union[3])
    if (
        not all(math.isfinite(v) for v in (left, bottom, right, top))
        or left >= right
        or bottom >= top
    ):
        raise BadInputError("the area does not meet the maps")
    inverse = ~transform
    cols, rows = zip(*(inverse @ (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
    col0, row0 = math.floor(min(cols) + 1e-9), math.floor(min(rows) + 1e-9)
    col1, row1 = math.ceil(max(cols) - 1e-9), math.ceil(max(rows) - 1e-9)
    return Grid(crs, transform * Affine.translation(col0, row0), row1 - row0, col1 - col0)


def _warp(cog: bytes, grid: Grid) -> npt.NDArray[np.uint8]:
    out = np.full((grid.height, grid.width), NODATA, np.uint8)
    with _open(cog) as mem, mem.open() as ds:
        reproject(
            source=ds.read(1),
            destination=out,
            src_transform=ds.transform,
            src_crs=ds.crs,
            src_nodata=NODATA,
            dst_transform=grid.transform,
            dst_crs=grid.crs,
            dst_nodata=NODATA,
            resampling=Resampling.nearest,
        )
    return out


def build(maps: Sequence[Map], geometry: areas.Geometry, max_cells: int = MAX_CELLS) -> Any:
    """The ``xarray.Dataset`` of ``maps`` (any order) inside ``geometry`` (WGS84). A cube of more
    than ``max_cells`` cells is refused before anything is allocated (maps far apart, e.g. of
    two tiles, make a grid of their union at the maps' pixel size)."""
    import xarray as xr

    if not maps:
        raise BadInputError("no result map meets the area in that time")
    classes = maps[0].classes
    if any(m.classes != classes for m in maps):
        raise BadInputError("the maps have different classes: pick one model_version")
    try:
        grid = target_grid(maps, geometry)
        days = sorted({m.date for m in maps})
        cells = len(days) * grid.height * grid.width
        if cells > max_cells:
            raise BadInputError(
                f"the cube would hold {len(days)} x {grid.height:,} x {grid.width:,} = {cells:,} "
                f"cells (at most {max_cells:,}): narrow the area or the datetime range, or pick "
                "one model (its maps' grid is the cube's)"
            )
        local = transform_geom("EPSG:4326", grid.crs, areas.densify(geometry))
        outside = geometry_mask(
            [local], out_shape=(grid.height, grid.width), transform=grid.transform
        )
        stack = np.full((len(days), grid.height, grid.width), NODATA, np.uint8)
        ids: list[list[str]] = [[] for _ in days]
        for item in sorted(maps, key=lambda m: (m.date, m.result_id)):
            t = days.index(item.date)
            warped = _warp(item.cog, grid)
            empty = stack[t] == NODATA
            stack[t][empty] = warped[empty]
            ids[t].append(item.result_id)
    except RasterioError as exc:
        raise BadInputError(f"a result map cannot be read: {exc}") from exc
    stack[:, outside] = NODATA
    gt = grid.transform
    xs = gt.c + gt.a * (np.arange(grid.width) + 0.5)
    ys = gt.f + gt.e * (np.arange(grid.height) + 0.5)
    legend = writer.legend(classes)
    labels = xr.DataArray(
        stack,
        dims=("time", "y", "x"),
        attrs={
            "long_name": "land-cover class",
            "flag_values": np.array([*range(len(classes)), UNCERTAIN], np.uint8),
            "flag_meanings": " ".join(e["name"] for e in legend),  # CF: words, no blanks
            "flag_colors": " ".join("#" + e["color_hint"] for e in legend),
            "legend": json.dumps(legend),
            "grid_mapping": "spatial_ref",
        },
    )
    dataset = xr.Dataset(
        {
            "classification": labels,
            "spatial_ref": xr.DataArray(np.int32(0), attrs=_crs_attrs(grid)),
        },
        coords={
            "time": (
                "time",
                np.array(days, dtype="datetime64[ns]"),
                {"long_name": "acquisition date"},
            ),
            "y": ("y", ys, _axis_attrs(grid.crs, "y")),
            "x": ("x", xs, _axis_attrs(grid.crs, "x")),
        },
        attrs={
            "Conventions": "CF-1.8",
            "title": "eostream land-cover maps of an area",
            "area": json.dumps(geometry),
            "results": json.dumps(ids),
        },
    )
    dataset["classification"].encoding = {
        "_FillValue": NODATA,
        "chunks": (1, grid.height, grid.width),
    }
    return dataset


def _axis_attrs(crs: CRS, axis: str) -> dict[str, str]:
    if crs.is_geographic:
        name = "longitude" if axis == "x" else "latitude"
        return {"standard_name": name, "units": f"degrees_{'east' if axis == 'x' else 'north'}"}
    return {
        "standard_name": f"projection_{axis}_coordinate",
        "units": "m",
        "long_name": f"{axis} of the pixel centre",
    }


def _crs_attrs(grid: Grid) -> dict[str, Any]:
    wkt = grid.crs.to_wkt(version="WKT2_2019")
    t = grid.transform
    attrs: dict[str, Any] = {
        "crs_wkt": wkt,
        "spatial_ref": wkt,
        "GeoTransform": " ".join(str(v) for v in (t.c, t.a, t.b, t.f, t.d, t.e)),
    }
    if grid.crs.is_geographic:
        attrs["grid_mapping_name"] = "latitude_longitude"
    params = grid.crs.to_dict()
    if params.get("proj") == "utm":
        zone = int(params["zone"])
        attrs |= {
            "grid_mapping_name": "transverse_mercator",
            "longitude_of_central_meridian": zone * 6.0 - 183.0,
            "latitude_of_projection_origin": 0.0,
            "scale_factor_at_central_meridian": 0.9996,
            "false_easting": 500000.0,
            "false_northing": 10000000.0 if params.get("south") else 0.0,
        }
    if grid.crs.to_epsg():
        attrs["epsg"] = int(grid.crs.to_epsg())
    return attrs


def class_areas(dataset: Any) -> tuple[list[str], list[str], list[list[float]]]:
    """Dates, class names (and uncertain) and km2 per date and class of a cube from :func:`build`
    (for a plot of the areas over time)."""
    labels = dataset["classification"]
    names = str(labels.attrs["flag_meanings"]).split()
    values = [int(v) for v in labels.attrs["flag_values"]]
    ref = dataset["spatial_ref"].attrs
    c, a, b, f, d, e = (float(v) for v in str(ref["GeoTransform"]).split())
    transform = Affine(a, b, c, d, e, f)
    crs = CRS.from_wkt(ref["crs_wkt"])
    raw = np.asarray(labels.values)
    row_km2 = areas.row_areas_km2(transform, crs, 0, raw.shape[1])
    table = []
    for t in range(raw.shape[0]):
        plane = (
            np.where(np.isnan(raw[t]), NODATA, raw[t]).astype(np.uint8)
            if raw.dtype.kind == "f"
            else raw[t]
        )
        counts = areas.count(plane, np.ones(plane.shape, bool), row_km2)
        table.append([float(counts.km2[v]) for v in values])
    dates = [str(v)[:10] for v in dataset["time"].values]
    return dates, names, table


#: what a zarr store holds at its top (v2 group, consolidated metadata; v3)
ZARR_MARKERS = (".zgroup", ".zmetadata", "zarr.json")


def replaceable(out: Path) -> bool:
    """Whether ``--overwrite`` may remove ``out`` to write a cube there: a zarr store or an
    empty folder (it removed any folder it was given, with everything in it)."""
    if not out.is_dir():
        return False
    return not any(out.iterdir()) or any((out / name).is_file() for name in ZARR_MARKERS)
