"""The vector export of a result (/results/{scene}/vector): one MultiPolygon per class, as
RFC 7946 GeoJSON and as GeoParquet, on real classified scenes: Boadella (EPSG:4326, 10 m; the
seed-3 test model maps it to two classes and some uncertain pixels) and 29RKH (UTM, 100 m)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geojson_pydantic
import geopandas  # type: ignore[import-untyped]
import httpx
import pyproj
import pytest
import rasterio
from shapely.geometry import shape

from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.shared.events import ModelPromoted

SCENE = "S2A_29RKH_20200219_0_L2A"
BOADELLA = "boadella-2020-06-21"


@pytest.fixture
def vector_limit() -> int | None:
    """INFERENCE_VECTOR_MAX_POLYGONS for a test (parametrise it); None: the default."""
    return None


@pytest.fixture
def settings(settings: InferenceSettings, vector_limit: int | None) -> InferenceSettings:
    if vector_limit is None:
        return settings
    return settings.model_copy(update={"vector_max_polygons": vector_limit})


async def _classified(
    service: InferenceService, make_model: Callable[..., ModelPromoted], *items: Path
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1", seed=3))
    for item in items:
        outcome = await asyncio.to_thread(service.pipeline.classify_href, str(item))
        assert not outcome.skipped


def _stats_areas(stats: dict[str, Any]) -> dict[str, float]:
    """km2 per class present in the map, from the statistics' pixel counts."""
    return {
        name: c["pixels"] * stats["pixel_area_km2"]
        for name, c in stats["classes"].items()
        if c["pixels"]
    }


async def test_the_geojson_has_one_valid_lonlat_multipolygon_per_class_with_the_map_s_areas(
    client: httpx.AsyncClient,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    await _classified(service, make_model, boadella_item("2020-06-21"))
    summary = (await client.get(f"/results/{BOADELLA}")).json()
    stats = (await client.get(f"/results/{BOADELLA}/statistics")).json()
    assert stats["uncertain"]["pixels"] > 0, "uncertain pixels to leave out"
    r = await client.get(summary["links"]["vector"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/geo+json"
    collection = r.json()
    geojson_pydantic.FeatureCollection.model_validate(collection)  # rings closed, positions
    expected = _stats_areas(stats)
    assert len(expected) >= 2, "a real map holds several classes"
    assert [f["properties"]["class"] for f in collection["features"]] == list(expected)
    pixels = sum(f["properties"]["pixels"] for f in collection["features"])
    assert pixels == stats["valid_pixels"] - stats["uncertain"]["pixels"], "no uncertain, no nodata"
    geod = pyproj.Geod(ellps="WGS84")
    west, south, east, north = summary["bbox"]
    for feature in collection["features"]:
        props = feature["properties"]
        geometry = shape(feature["geometry"])
        assert geometry.geom_type == "MultiPolygon" and geometry.is_valid, props["class"]
        minx, miny, maxx, maxy = geometry.bounds
        assert -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90
        assert west - 0.01 <= minx and maxx <= east + 0.01 and south - 0.01 <= miny
        assert maxy <= north + 0.01, "the polygons lie on the scene"
        for polygon in geometry.geoms:  # RFC 7946: exteriors counter-clockwise
            assert polygon.exterior.is_ccw and not any(i.is_ccw for i in polygon.interiors)
        name = props["class"]
        assert props["pixels"] == stats["classes"][name]["pixels"]
        assert props["value"] == list(stats["classes"]).index(name)
        assert props["colour"].startswith("#") and len(props["colour"]) == 7
        # geodesic areas against the statistics' mid-latitude pixel area
        assert props["area_km2"] == pytest.approx(expected[name], rel=0.01)
        area = abs(geod.geometry_area_perimeter(geometry)[0]) / 1e6
        assert area == pytest.approx(props["area_km2"], rel=1e-6)
        assert (props["scene_id"], props["model_name"], props["model_version"]) == (
            BOADELLA,
            "eurosat",
            "1",
        )
        assert props["run_id"] == "run1"


async def test_the_geoparquet_opens_with_geopandas_in_the_cog_s_crs(
    client: httpx.AsyncClient,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    rkh_item: Path,
    boadella_item: Callable[[str], Path],
) -> None:
    await _classified(service, make_model, rkh_item, boadella_item("2020-06-21"))
    r = await client.get(f"/results/{BOADELLA}/vector", params={"f": "parquet"})
    frame = geopandas.read_parquet(io.BytesIO(r.content))
    assert frame.crs.to_epsg() == 4326 and len(frame) == 2 and frame.geometry.is_valid.all()

    stats = (await client.get(f"/results/{SCENE}/statistics")).json()
    cog = (await client.get(f"/results/{SCENE}/cog")).content
    with rasterio.MemoryFile(cog) as memory, memory.open() as ds:
        crs = ds.crs
    r = await client.get(f"/results/{SCENE}/vector", params={"f": "parquet", "model_version": "1"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    assert SCENE in r.headers["content-disposition"]
    frame = geopandas.read_parquet(io.BytesIO(r.content))
    assert frame.crs == pyproj.CRS.from_wkt(crs.to_wkt()) and frame.crs.to_epsg() == 32629
    expected = _stats_areas(stats)
    assert list(frame["class"]) == list(expected)
    assert frame.geometry.is_valid.all()
    for name, area in zip(frame["class"], frame.geometry.area / 1e6, strict=True):
        assert area == pytest.approx(expected[name], abs=1e-6), name  # pixels x pixel area
    assert set(frame["scene_id"]) == {SCENE} and set(frame["model_version"]) == {"1"}
    # the UTM map's GeoJSON is lon/lat on the scene
    west, south, east, north = (await client.get(f"/results/{SCENE}")).json()["bbox"]
    collection = (await client.get(f"/results/{SCENE}/vector")).json()
    for feature in collection["features"]:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and geometry.geom_type == "MultiPolygon"
        minx, miny, maxx, maxy = geometry.bounds
        assert west - 0.01 <= minx < maxx <= east + 0.01 and south - 0.01 <= miny < maxy
        assert maxy <= north + 0.01


async def test_simplified_polygons_stay_valid_with_fewer_vertices_and_close_areas(
    client: httpx.AsyncClient,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    await _classified(service, make_model, boadella_item("2020-06-21"))
    full = (await client.get(f"/results/{BOADELLA}/vector", params={"f": "parquet"})).content
    r = await client.get(f"/results/{BOADELLA}/vector", params={"f": "parquet", "simplify": 200})
    assert r.status_code == 200, r.text
    exact, simple = (geopandas.read_parquet(io.BytesIO(b)) for b in (full, r.content))
    assert simple.geometry.is_valid.all()
    assert simple.geometry.count_coordinates().sum() < exact.geometry.count_coordinates().sum()
    assert simple["area_km2"].sum() == pytest.approx(exact["area_km2"].sum(), rel=0.02)


async def test_bad_requests_get_the_error_body(
    client: httpx.AsyncClient,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    rkh_item: Path,
) -> None:
    await _classified(service, make_model, rkh_item)
    for path, params, status in (
        (f"/results/{SCENE}/vector", {"f": "shapefile"}, 422),
        (f"/results/{SCENE}/vector", {"simplify": "5000"}, 422),
        (f"/results/{SCENE}/vector", {"simplify": "-1"}, 422),
        ("/results/no-such-scene/vector", {}, 404),
        (f"/results/{SCENE}/vector", {"model_version": "99"}, 404),
    ):
        r = await client.get(path, params=params)
        assert r.status_code == status, (params, r.text)
        body = r.json()
        assert set(body) >= {"code", "description"} and body["description"], body


@pytest.mark.parametrize("vector_limit", [3])
async def test_a_map_with_more_polygons_than_allowed_is_refused_with_413(
    client: httpx.AsyncClient,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    rkh_item: Path,
) -> None:
    await _classified(service, make_model, rkh_item)
    r = await client.get(f"/results/{SCENE}/vector")
    assert r.status_code == 413
    assert r.json()["code"] == "too_large" and "more than 3 polygons" in r.json()["description"]
