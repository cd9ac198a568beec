"""Class areas of result maps inside an area, and transitions between two maps (pure functions
over arrays, and a reader of result COGs).

A pixel is in the area when its centre is (``rasterio.features.geometry_mask``, not
``all_touched``), so two areas that split a scene count each pixel exactly once. Areas come
from the pixels inside the area, never from whole-scene shares: the COG is read in the window
around the area and masked with the geometry. Pixel areas come from the COG's transform and
CRS: projected CRSs (UTM) in metres; geographic CRSs per row, ``111.32 km`` per degree times
``cos(latitude)`` of the row's centre (the approximation the per-scene statistics use at the
scene's centre). Labels: classes ``0..n-1``, ``254`` uncertain (counted apart), ``255`` nodata
(outside the scene, masked clouds: counted as ``nodata_pixels``, never as an area).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from rasterio.errors import RasterioError
from rasterio.features import geometry_mask
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from rasterio.windows import Window

from eostream.inference.engine import NODATA, UNCERTAIN
from eostream.inference.errors import BadInputError
from eostream.inference.writer import UNCERTAIN_NAME

METRES_PER_DEGREE = 111_320.0
Geometry = dict[str, Any]
_POLYGONAL = ("Polygon", "MultiPolygon")


# -- the area ------------------------------------------------------------------------------
def bbox_geometry(bbox: tuple[float, float, float, float]) -> Geometry:
    """A WGS84 bbox as a polygon; one that crosses the antimeridian (minx > maxx) is refused."""
    minx, miny, maxx, maxy = bbox
    if minx > maxx:
        raise BadInputError(
            f"bbox {list(bbox)} crosses the antimeridian (minx > maxx): not supported, "
            "ask for the two sides separately"
        )
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise BadInputError(f"bbox {list(bbox)} is outside -180..180, -90..90")
    ring = [[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny]]
    return {"type": "Polygon", "coordinates": [ring]}


def check_geometry(value: Any) -> Geometry:
    """A GeoJSON Polygon or MultiPolygon in WGS84 (RFC 7946): closed rings of at least four
    finite positions, longitudes -180..180 (a ring spanning more than 180 degrees would cross
    the antimeridian: refused), latitudes -90..90. Anything else is a :class:`BadInputError`."""
    if not isinstance(value, dict) or value.get("type") not in _POLYGONAL:
        raise BadInputError("intersects must be a GeoJSON Polygon or MultiPolygon")
    coords = value.get("coordinates")
    polygons = [coords] if value["type"] == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        raise BadInputError(f"intersects: a {value['type']} needs coordinates")
    flat = []
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            raise BadInputError("intersects: a polygon is a list of linear rings")
        flat.append([_check_ring(ring) for ring in polygon])
    return (
        {"type": "Polygon", "coordinates": flat[0]}
        if value["type"] == "Polygon"
        else {
            "type": "MultiPolygon",
            "coordinates": flat,
        }
    )


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_ring(ring: Any) -> list[list[float]]:
    """The ring in 2D (a third coordinate is dropped)."""
    if not isinstance(ring, list) or len(ring) < 4:
        raise BadInputError("intersects: a linear ring needs at least four positions")
    out = []
    for position in ring:
        if (
            not isinstance(position, list)
            or len(position) not in (2, 3)
            or not all(_number(v) for v in position)
        ):
            raise BadInputError("intersects: a position is two or three numbers")
        x, y = position[0], position[1]
        if not (-180 <= x <= 180 and -90 <= y <= 90):  # NaN fails too
            where = str(position)[:80]
            raise BadInputError(f"intersects: position {where} is outside -180..180, -90..90")
        out.append([float(x), float(y)])
    if out[0] != out[-1]:
        raise BadInputError("intersects: a linear ring must end where it starts")
    lons = [p[0] for p in out]
    if max(lons) - min(lons) > 180:
        raise BadInputError(
            "intersects: a ring spans more than 180 degrees of longitude (crosses the "
            "antimeridian?): not supported, ask for the two sides separately"
        )
    return out


def geometry_bbox(geometry: Geometry) -> tuple[float, float, float, float]:
    polygons = (
        [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    )
    xs = [p[0] for polygon in polygons for ring in polygon for p in ring]
    ys = [p[1] for polygon in polygons for ring in polygon for p in ring]
    return min(xs), min(ys), max(xs), max(ys)


#: the pixels of a map whose size its result does not record: a full Sentinel-2 tile at 10 m
FULL_TILE_PIXELS = 10980 * 10980
#: tan(5 degrees): more than the turn between a UTM grid and the WGS84 axes (the grid
#: convergence, ~3 degrees at a zone's edge in Sentinel-2's latitudes) and the slant of a
#: degree's width with latitude across a tile
SKEW = 0.0875


def window_pixels(
    pixels: int, footprint: tuple[float, float, float, float] | None, geometry: Geometry | None
) -> int:
    """At least about how many of a map's ``pixels`` :func:`read_area` reads for ``geometry``,
    before reading it: the share of the map's WGS84 footprint bbox that the area's bbox covers,
    each side widened by the other's times :data:`SKEW` (the window read is the area's bbox in
    the map's UTM grid, turned by up to a few degrees: a thin strip reads a wide window). All of
    them without an area or a footprint, where the footprint crosses the antimeridian, and where
    the boxes do not meet (the footprint is the scene's, smaller than the map on a partial tile;
    the read still opens the map): an estimate that errs, errs high."""
    if geometry is None or footprint is None:
        return pixels
    ax0, ay0, ax1, ay1 = geometry_bbox(geometry)
    fx0, fy0, fx1, fy1 = footprint
    if fx0 >= fx1 or fy0 >= fy1:  # across the antimeridian (west > east), or degenerate
        return pixels
    width, height = min(ax1, fx1) - max(ax0, fx0), min(ay1, fy1) - max(ay0, fy0)
    if width < 0 or height < 0:
        return pixels
    fw, fh = fx1 - fx0, fy1 - fy0
    share_x = min(1.0, (width + SKEW * height * fw / fh) / fw)
    share_y = min(1.0, (height + SKEW * width * fh / fw) / fh)
    return min(pixels, math.ceil(pixels * share_x * share_y) + 1)


def densify(geometry: Geometry, parts: int = 16) -> Geometry:
    """``geometry`` with each edge cut in ``parts``, so that a WGS84 edge stays close to its
    course once projected (a bbox is a curved shape in UTM)."""

    def ring(points: list[list[float]]) -> list[list[float]]:
        out = []
        for (x0, y0, *_), (x1, y1, *_) in itertools.pairwise(points):
            out += [[x0 + (x1 - x0) * k / parts, y0 + (y1 - y0) * k / parts] for k in range(parts)]
        return [*out, [float(points[-1][0]), float(points[-1][1])]]

    coords = geometry["coordinates"]
    if geometry["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": [ring(r) for r in coords]}
    return {"type": "MultiPolygon", "coordinates": [[ring(r) for r in p] for p in coords]}


# -- pixel areas and counts ------------------------------------------------------------------
def row_areas_km2(transform: Any, crs: Any, row_off: int, height: int) -> npt.NDArray[np.float64]:
    """The area in km2 of one pixel of each row ``row_off .. row_off + height - 1``."""
    a, e = abs(float(transform.a)), abs(float(transform.e))
    if crs is not None and crs.is_geographic:
        rows = np.arange(row_off, row_off + height, dtype=np.float64) + 0.5
        lat = float(transform.f) + float(transform.e) * rows
        return a * e * METRES_PER_DEGREE**2 * np.cos(np.radians(lat)) / 1e6
    factor = float(crs.linear_units_factor[1]) if crs is not None else 1.0
    return np.full(height, a * e * factor * factor / 1e6)


@dataclass(frozen=True)
class Counts:
    """Pixels and km2 per label value (0..255) of the pixels inside the area."""

    pixels: npt.NDArray[np.int64]
    km2: npt.NDArray[np.float64]

    @classmethod
    def empty(cls) -> Counts:
        return cls(np.zeros(256, np.int64), np.zeros(256, np.float64))

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.pixels + other.pixels, self.km2 + other.km2)

    def classes(self, names: tuple[str, ...]) -> dict[str, dict[str, float | int]]:
        """Per class name (and ``uncertain``): pixels and km2."""
        out: dict[str, dict[str, float | int]] = {
            name: {"pixels": int(self.pixels[i]), "km2": float(self.km2[i])}
            for i, name in enumerate(names)
        }
        out[UNCERTAIN_NAME] = {
            "pixels": int(self.pixels[UNCERTAIN]),
            "km2": float(self.km2[UNCERTAIN]),
        }
        return out


#: pixels per block of rows in :func:`count` and :func:`transitions`: their temporaries (indices,
#: weights) stay a few MB whatever the map's size, where whole-map ones took ~33 bytes a pixel
BLOCK_PIXELS = 1 << 20


def _rows_per_block(shape: tuple[int, ...]) -> int:
    return max(1, BLOCK_PIXELS // max(1, shape[1]))


def count(
    labels: npt.NDArray[np.uint8], inside: npt.NDArray[np.bool_], row_km2: npt.NDArray[np.float64]
) -> Counts:
    """Pixels and km2 per label value over the pixels where ``inside`` (in blocks of rows)."""
    pixels, km2 = np.zeros(256, np.int64), np.zeros(256, np.float64)
    step = _rows_per_block(labels.shape)
    for row in range(0, labels.shape[0], step):
        block, keep = labels[row : row + step], inside[row : row + step]
        weights = np.broadcast_to(row_km2[row : row + step, None], block.shape)
        values = block[keep]
        pixels += np.bincount(values, minlength=256).astype(np.int64)
        km2 += np.bincount(values, weights=weights[keep], minlength=256)
    return Counts(pixels, km2)


def transitions(
    a: npt.NDArray[np.uint8],
    b: npt.NDArray[np.uint8],
    inside: npt.NDArray[np.bool_],
    row_km2: npt.NDArray[np.float64],
    values: list[int],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """From-to matrices (pixels, km2) over ``values`` (row: the value in ``a``, column: in
    ``b``) of the pixels inside the area that hold one of ``values`` in both maps. Counted in
    blocks of rows with uint8 indices: memory beyond the maps is a few MB."""
    n = len(values)
    if n > 255:
        raise BadInputError(f"{n} classes: at most 255 can be compared")
    index = np.full(256, 255, np.uint8)  # 255: not one of values
    index[values] = np.arange(n, dtype=np.uint8)
    pixels, km2 = np.zeros(n * n, np.int64), np.zeros(n * n, np.float64)
    step = _rows_per_block(a.shape)
    for row in range(0, a.shape[0], step):
        ia, ib = index[a[row : row + step]], index[b[row : row + step]]
        keep = inside[row : row + step] & (ia != 255) & (ib != 255)
        code = ia[keep].astype(np.int32) * n + ib[keep]
        weights = np.broadcast_to(row_km2[row : row + step, None], ia.shape)[keep]
        pixels += np.bincount(code, minlength=n * n).astype(np.int64)
        km2 += np.bincount(code, weights=weights, minlength=n * n)
    return pixels.reshape(n, n), km2.reshape(n, n)


# -- reading a result map ----------------------------------------------------------------------
@dataclass(frozen=True)
class AreaMap:
    """The window of a result map around an area: labels, which pixels are inside, pixel areas."""

    labels: npt.NDArray[np.uint8]
    inside: npt.NDArray[np.bool_]
    row_km2: npt.NDArray[np.float64]
    window: Window
    transform: Any  # of the whole map
    crs: Any
    shape: tuple[int, int]  # of the whole map

    @property
    def grid(self) -> tuple[str, tuple[float, ...], tuple[int, int]]:
        """What two maps must share to be compared pixel by pixel."""
        return str(self.crs), tuple(round(v, 9) for v in self.transform[:6]), self.shape

    def counts(self) -> Counts:
        return count(self.labels, self.inside, self.row_km2)


def read_area(data: bytes, geometry: Geometry | None) -> AreaMap:
    """The window of the COG ``data`` around ``geometry`` (WGS84; ``None``: the whole map),
    masked to the pixels whose centre is inside it. An area outside the map gives an empty
    window."""
    try:
        with MemoryFile(data) as mem, mem.open() as ds:
            return _read(ds, geometry)
    except RasterioError as exc:
        raise BadInputError(f"a result map cannot be read: {exc}") from exc


def _window(
    bounds: tuple[float, float, float, float], transform: Any, width: int, height: int
) -> Window:
    """The whole pixels that cover ``bounds`` (in the map's CRS), clipped to the map."""
    if not all(math.isfinite(v) for v in bounds):  # far outside the map's CRS
        return Window(0, 0, 0, 0)
    left, bottom, right, top = bounds
    inverse = ~transform
    cols, rows = zip(*(inverse @ (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
    col0, col1 = max(0, math.floor(min(cols))), min(width, math.ceil(max(cols)))
    row0, row1 = max(0, math.floor(min(rows))), min(height, math.ceil(max(rows)))
    return Window(col0, row0, max(0, col1 - col0), max(0, row1 - row0))


def _read(ds: Any, geometry: Geometry | None) -> AreaMap:
    full = Window(0, 0, ds.width, ds.height)
    if geometry is None:
        window, local = full, None
    else:
        try:
            local = transform_geom("EPSG:4326", ds.crs, densify(geometry)) if ds.crs else geometry
            window = _window(geometry_bbox(local), ds.transform, ds.width, ds.height)
        except Exception:  # GDAL raises its (private) CPLE errors: not expressible there
            local, window = geometry, Window(0, 0, 0, 0)
    height, width = int(window.height), int(window.width)
    if height <= 0 or width <= 0:
        labels = np.full((0, 0), NODATA, np.uint8)
        inside = np.zeros((0, 0), bool)
    else:
        labels = ds.read(1, window=window)
        if local is None:  # every pixel: a read-only view, no byte per pixel
            inside = np.broadcast_to(np.True_, labels.shape)
        else:
            inside = geometry_mask(
                [local], out_shape=labels.shape, transform=ds.window_transform(window), invert=True
            )
    return AreaMap(
        labels=labels,
        inside=inside,
        row_km2=row_areas_km2(ds.transform, ds.crs, int(window.row_off), labels.shape[0]),
        window=window,
        transform=ds.transform,
        crs=ds.crs,
        shape=(ds.height, ds.width),
    )
