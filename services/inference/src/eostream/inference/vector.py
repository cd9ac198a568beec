"""A result map as polygons: one MultiPolygon feature per class (every region of that class,
dissolved), for GIS users who style by category and read areas from the attribute table.

The classification COG is polygonised with ``rasterio.features.shapes`` (4-connected regions,
so the parts of a class never overlap and meet at most at a corner); nodata (255) and uncertain
(254) pixels belong to no feature. Areas come from the polygons in the COG's own CRS (geodesic
for a geographic CRS), so unsimplified they are the pixel counts times the pixel area.
Two encodings: GeoJSON (RFC 7946: EPSG:4326, exterior rings counter-clockwise) and GeoParquet
1.1 (WKB in the COG's CRS, the ``geo`` metadata written with pyarrow).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyproj
import shapely
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from shapely.geometry import MultiPolygon, mapping, shape

from eostream.inference.errors import BadInputError, TooLargeError
from eostream.inference.writer import legend

#: Media types of the two encodings.
GEOJSON = "application/geo+json"
PARQUET = "application/vnd.apache.parquet"
_METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class ClassFeature:
    """Every region of one class, in the map's CRS."""

    value: int
    name: str
    colour: str  # "#RRGGBB", the COG's colour map entry
    geometry: MultiPolygon
    pixels: int
    area_km2: float


@dataclass(frozen=True)
class VectorMap:
    crs: CRS
    features: tuple[ClassFeature, ...]
    polygons: int  # regions before dissolving (what the guard counts)
    properties: dict[str, Any]  # the result's: scene, model, version, run


def vectorise(
    cog: bytes,
    classes: tuple[str, ...],
    properties: dict[str, Any],
    *,
    max_polygons: int,
    simplify_m: float = 0.0,
) -> VectorMap:
    """Polygonise a classification COG. More than ``max_polygons`` regions (counted while
    polygonising, before any is kept) raise :class:`TooLargeError`. ``simplify_m`` > 0 simplifies
    each class (topology kept within a class; neighbouring classes may then gap or overlap
    slightly, and areas change accordingly)."""
    with MemoryFile(cog) as memory, memory.open() as ds:
        labels = ds.read(1)
        transform, crs = ds.transform, ds.crs
    if crs is None:
        raise BadInputError("the result map has no CRS; it cannot be exported as polygons")
    valid = labels < len(classes)
    parts: dict[int, list[Any]] = {}
    count = 0
    for geom, value in shapes(labels, mask=valid, connectivity=4, transform=transform):
        count += 1
        if count > max_polygons:
            raise TooLargeError(
                f"the map has more than {max_polygons} polygons (INFERENCE_VECTOR_MAX_POLYGONS); "
                "download the COG (/cog) and polygonise it locally instead"
            )
        parts.setdefault(int(value), []).append(shape(geom))
    pixels = np.bincount(labels[valid].ravel(), minlength=len(classes))
    tolerance = _native_units(crs, simplify_m)
    colours = {e["value"]: "#" + str(e["color_hint"]) for e in legend(classes)}
    features = []
    for value in sorted(parts):
        geometry = MultiPolygon(parts[value])
        if tolerance > 0:
            simple = geometry.simplify(tolerance, preserve_topology=True)
            geometry = simple if isinstance(simple, MultiPolygon) else MultiPolygon([simple])
        if geometry.is_empty:
            continue
        features.append(
            ClassFeature(
                value=value,
                name=classes[value],
                colour=colours[value],
                geometry=geometry,
                pixels=int(pixels[value]),
                area_km2=round(_area_m2(geometry, crs) / 1e6, 6),
            )
        )
    return VectorMap(crs=crs, features=tuple(features), polygons=count, properties=properties)


def _native_units(crs: CRS, metres: float) -> float:
    if metres <= 0:
        return 0.0
    if crs.is_geographic:
        return metres / _METRES_PER_DEGREE
    unit_metres = crs.linear_units_factor[1] or 1.0
    return metres / unit_metres


def _area_m2(geometry: MultiPolygon, crs: CRS) -> float:
    if crs.is_geographic:
        area, _perimeter = pyproj.Geod(ellps="WGS84").geometry_area_perimeter(geometry)
        return abs(float(area))
    return float(geometry.area) * (crs.linear_units_factor[1] or 1.0) ** 2


def _properties(vm: VectorMap, feature: ClassFeature) -> dict[str, Any]:
    return {
        "class": feature.name,
        "value": feature.value,
        "colour": feature.colour,
        "area_km2": feature.area_km2,
        "pixels": feature.pixels,
        **vm.properties,
    }


def to_geojson(vm: VectorMap) -> bytes:
    """An RFC 7946 FeatureCollection in EPSG:4326 (geometries reprojected, cut at the
    antimeridian, exterior rings counter-clockwise)."""
    to_lonlat = pyproj.Transformer.from_crs(
        pyproj.CRS.from_wkt(vm.crs.to_wkt()), "EPSG:4326", always_xy=True
    )
    features = []
    for feature in vm.features:
        lonlat = shapely.transform(feature.geometry, to_lonlat.transform, interleaved=False)
        west, _, east, _ = lonlat.bounds
        if not (-180 <= west <= east <= 180) or east - west > 180:  # crosses the antimeridian
            lonlat = shape(transform_geom(vm.crs, "EPSG:4326", mapping(feature.geometry)))
        features.append(
            {
                "type": "Feature",
                "id": feature.name,
                "geometry": mapping(shapely.orient_polygons(lonlat)),
                "properties": _properties(vm, feature),
            }
        )
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


def to_geoparquet(vm: VectorMap) -> bytes:
    """GeoParquet 1.1: one row per class, WKB geometry in the map's CRS (PROJJSON in the
    ``geo`` metadata), readable by geopandas, GDAL/QGIS and DuckDB."""
    import pyarrow as pa  # type: ignore[import-untyped]  # imported when asked: ~0.3 s
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    rows = [_properties(vm, f) for f in vm.features]
    columns: dict[str, Any] = {
        key: [row[key] for row in rows] for key in (rows[0] if rows else {"class": None})
    }
    columns["geometry"] = [shapely.to_wkb(f.geometry) for f in vm.features]
    table = pa.table(columns)
    bounds = list(shapely.total_bounds([f.geometry for f in vm.features])) if vm.features else []
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["MultiPolygon"],
                "crs": pyproj.CRS.from_wkt(vm.crs.to_wkt()).to_json_dict(),
                **({"bbox": [float(b) for b in bounds]} if bounds else {}),
            }
        },
    }
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
