"""Results of scenes across the antimeridian (a bbox with west > east, as STAC writes it, e.g.
``[179, -17, -179, -16]``) are found by a bbox on either side of it, and by a box that itself
crosses it; boxes that do not reach them do not find them. On sqlite (the embedded index) and
on PostgreSQL (the full stack's). Over HTTP, ``/results?bbox`` and ``/stac/search`` (bbox and
``intersects``) find them, and a query bbox across the antimeridian is refused with a 400 that
says how to search instead."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import shapely.geometry

from eostream.inference.api.app import create_app
from eostream.inference.api.search import index_bbox
from eostream.inference.results import (
    ResultQuery,
    ResultRecord,
    ResultsStore,
    build_results_store,
    extent,
)
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.subscriptions.matching import footprint
from eostream.inference.wiring import build_service
from eostream.shared.bus.memory import InMemoryBus

Box = tuple[float, float, float, float]

#: the stored results: name -> bbox
SCENES: dict[str, Box] = {
    "across": (179.0, -17.0, -179.0, -16.0),  # Fiji, across the antimeridian
    "east": (178.0, -17.0, 178.5, -16.0),  # just west of 180
    "west": (-178.5, -17.0, -178.0, -16.0),  # just east of -180
    "south": (179.5, -60.0, -179.5, -59.0),  # across too, far to the south
    "origin": (0.0, 0.0, 1.0, 1.0),
}

#: query bbox -> the results it must find, exactly
NORMAL_QUERIES: list[tuple[Box, set[str]]] = [
    ((179.2, -16.8, 179.8, -16.2), {"across"}),  # inside its eastern-hemisphere part
    ((-179.8, -16.8, -179.2, -16.2), {"across"}),  # inside its western-hemisphere part
    ((178.2, -17.0, 179.5, -16.0), {"east", "across"}),
    ((-179.5, -17.0, -178.2, -16.0), {"across", "west"}),
    ((179.9, -70.0, 180.0, 0.0), {"across", "south"}),  # up to the antimeridian itself
    ((-180.0, -70.0, -179.9, 0.0), {"across", "south"}),
    ((170.0, -20.0, 178.9, -10.0), {"east"}),  # stops short of across's west (179)
    ((-178.9, -20.0, -170.0, -10.0), {"west"}),  # starts past across's east (-179)
    ((179.2, -60.0, 179.8, -59.0), {"south"}),  # latitudes still count
    ((-170.0, -17.0, 170.0, -16.0), set()),  # wide, but not reaching ±180
    ((10.0, -17.0, 20.0, -16.0), set()),
    ((0.5, 0.5, 2.0, 2.0), {"origin"}),
    ((-180.0, -90.0, 180.0, 90.0), set(SCENES)),
]
#: query boxes that cross the antimeridian themselves (the store answers them; the API refuses)
CROSSING_QUERIES: list[tuple[Box, set[str]]] = [
    ((178.8, -17.0, -178.8, -16.0), {"across"}),
    ((178.2, -17.0, -178.2, -16.0), {"east", "across", "west"}),
    ((179.95, -60.0, -179.95, -16.0), {"across", "south"}),
    ((179.6, -18.0, 179.5, -15.0), {"east", "across", "west"}),  # all but 179.5..179.6
    ((170.0, 0.0, -170.0, 1.0), set()),  # right longitudes, wrong latitudes
    ((2.0, 0.0, -1.0, 1.0), set()),  # all longitudes but -1..2: misses origin (0..1)
    ((1.5, 0.0, 0.5, 1.0), {"origin"}),  # all but 0.5..1.5: meets origin's 0..0.5
]


def _record(name: str, bbox: Box, model: str) -> ResultRecord:
    return ResultRecord(
        id=f"{name}__{model}__v1",
        scene_id=name,
        model_name=model,
        model_version="1",
        run_id=None,
        datetime=datetime(2024, 5, 1, 22, 10, tzinfo=UTC),
        bbox=bbox,
        prefix=f"results/{name}/{model}/v1",
        item=_item(name, bbox, model),
        stats={"classes": {}},
    )


def _item(name: str, bbox: Box, model: str) -> dict[str, Any]:
    """A result item whose geometry is GeoJSON's: split in two at the antimeridian when its
    bbox crosses it."""
    west, south, east, north = bbox

    def ring(w: float, e: float) -> list[list[list[float]]]:
        return [[[w, south], [e, south], [e, north], [w, north], [w, south]]]

    geometry: dict[str, Any]
    if west > east:
        geometry = {"type": "MultiPolygon", "coordinates": [ring(west, 180), ring(-180, east)]}
    else:
        geometry = {"type": "Polygon", "coordinates": ring(west, east)}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"{name}__{model}__v1",
        "geometry": geometry,
        "bbox": list(bbox),
        "properties": {"datetime": "2024-05-01T22:10:00Z", "eostream:scene_id": name},
        "links": [],
        "assets": {},
    }


def _found(store: ResultsStore, bbox: Box, model: str) -> set[str]:
    records, total = store.search(ResultQuery(bbox=bbox, model_name=model, limit=100))
    assert total == len(records)
    return {r.scene_id for r in records}


def _check(store: ResultsStore, model: str) -> None:
    for name, bbox in SCENES.items():
        store.put(_record(name, bbox, model))
    try:
        for bbox, expected in NORMAL_QUERIES + CROSSING_QUERIES:
            assert _found(store, bbox, model) == expected, bbox
        back = store.get("across", "1", model)
        assert back is not None and back.bbox == SCENES["across"]  # stored as given
    finally:
        store.close()


def test_scenes_across_the_antimeridian_are_found_on_sqlite(tmp_path: Path) -> None:
    _check(build_results_store(f"sqlite:///{tmp_path}/results.db"), "m")


def test_the_extent_of_results_across_the_antimeridian_holds_them(tmp_path: Path) -> None:
    """min(west) and max(east) of boxes with west > east make a box that misses them: such an
    extent spans every longitude."""
    store = build_results_store(f"sqlite:///{tmp_path}/results.db")
    assert extent(store) == (None, [None, None])  # nothing yet: the caller says the world
    store.put(_record("west", SCENES["west"], "m"))
    box, (first, last) = extent(store)
    assert box == list(SCENES["west"]) and first == last == "2024-05-01T22:10:00Z"
    store.put(_record("across", SCENES["across"], "m"))
    assert extent(store)[0] == [-180.0, -17.0, 180.0, -16.0]


@pytest.mark.stack
def test_scenes_across_the_antimeridian_are_found_on_postgresql(own_results_db: str) -> None:
    _check(build_results_store(own_results_db), "m")


async def test_http_searches_find_scenes_across_the_antimeridian(
    client: httpx.AsyncClient, service: InferenceService
) -> None:
    for name, bbox in SCENES.items():
        service.results.put(_record(name, bbox, "m"))

    async def results(bbox: Box) -> set[str]:
        r = await client.get("/results", params={"bbox": ",".join(map(str, bbox))})
        assert r.status_code == 200, r.text
        return {hit["scene_id"] for hit in r.json()["results"]}

    async def stac(**body: Any) -> set[str]:
        r = await client.post("/stac/search", json={**body, "limit": 100})
        assert r.status_code == 200, r.text
        return {f["properties"]["eostream:scene_id"] for f in r.json()["features"]}

    for bbox, expected in NORMAL_QUERIES:
        assert await results(bbox) == expected, bbox
        assert await stac(bbox=list(bbox)) == expected, bbox
    # intersects: found by the geometry's bounds, then kept where the geometries meet
    east_part = {
        "type": "Polygon",
        "coordinates": [
            [[179.2, -16.8], [179.8, -16.8], [179.8, -16.2], [179.2, -16.2], [179.2, -16.8]]
        ],
    }
    assert await stac(intersects=east_part) == {"across"}
    both_sides = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[178.2, -17], [180, -17], [180, -16], [178.2, -16], [178.2, -17]]],
            [[[-180, -17], [-178.9, -17], [-178.9, -16], [-180, -16], [-180, -17]]],
        ],
    }
    assert await stac(intersects=both_sides) == {"east", "across"}


async def test_a_query_bbox_across_the_antimeridian_is_a_400(client: httpx.AsyncClient) -> None:
    for request in (
        client.get("/results", params={"bbox": "178,-17,-178,-16"}),
        client.get("/stac/search", params={"bbox": "178,-17,-178,-16"}),
        client.post("/stac/search", json={"bbox": [178, -17, -178, -16]}),
    ):
        answer = await request
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert set(body) == {"code", "description"}, body
        assert "antimeridian" in body["description"], body
        assert "search each side apart" in body["description"], body


def test_an_area_split_at_the_antimeridian_narrows_the_index_to_the_box_across_it() -> None:
    """RFC 7946 splits such an area at 180: its bounds are the whole -180..180 band, which
    would load every result of those latitudes (and meet the candidates' limit); the index is
    asked for the box across the antimeridian instead."""
    east_part = shapely.geometry.box(179.5, -17.0, 180.0, -16.0)
    west_part = shapely.geometry.box(-180.0, -17.0, -179.5, -16.0)
    split = shapely.geometry.MultiPolygon([east_part, west_part])
    assert index_bbox(split) == (179.5, -17.0, -179.5, -16.0)
    assert index_bbox(east_part) == (179.5, -17.0, 180.0, -16.0)
    elsewhere = shapely.geometry.MultiPolygon([east_part, shapely.geometry.box(0, 0, 1, 1)])
    assert index_bbox(elsewhere) == (0.0, -17.0, 180.0, 1.0)


async def test_a_result_without_a_geometry_is_its_bbox_on_both_sides(
    client: httpx.AsyncClient, service: InferenceService
) -> None:
    """An item with no geometry falls back to its bbox: across the antimeridian that is the two
    sides, west..180 and -180..east, not the box between them (the rest of the globe), for the
    ``intersects`` search and for the subscriptions' matcher alike."""
    record = _record("across", SCENES["across"], "m")
    service.results.put(dataclasses.replace(record, item={**record.item, "geometry": None}))
    where = footprint(record.item | {"geometry": None}, record.bbox)
    assert where is not None and where.geom_type == "MultiPolygon"
    for area, meets in (
        (shapely.geometry.box(179.2, -16.8, 179.8, -16.2), True),
        (shapely.geometry.box(-179.8, -16.8, -179.2, -16.2), True),
        (shapely.geometry.box(0.0, -16.8, 1.0, -16.2), False),  # between its sides: Africa
    ):
        assert where.intersects(area) is meets, area.bounds
        r = await client.post(
            "/stac/search", json={"intersects": shapely.geometry.mapping(area), "limit": 10}
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["features"]) == int(meets), area.bounds


async def test_a_split_area_loads_only_the_results_across_the_antimeridian(
    settings: InferenceSettings, bus: InMemoryBus
) -> None:
    """The search itself asked the index for the area's bounds, the whole -180..180 band: with
    more results in that band than it may load, a split area near Fiji answered 413."""
    narrow = settings.model_copy(update={"stac_max_candidates": 3})
    service = build_service(narrow, bus=bus)
    await service.start()
    try:
        for i in range(5):  # near 0 degrees, in the same latitudes
            service.results.put(_record(f"zero-{i}", (0.1 * i, -16.8, 0.1 * i + 0.05, -16.2), "m"))
        service.results.put(_record("fiji", (179.2, -16.8, 179.8, -16.2), "m"))
        split = {
            "type": "MultiPolygon",
            "coordinates": [
                [[[179.0, -17], [180, -17], [180, -16], [179.0, -16], [179.0, -17]]],
                [[[-180, -17], [-179.5, -17], [-179.5, -16], [-180, -16], [-180, -17]]],
            ],
        }
        transport = httpx.ASGITransport(app=create_app(narrow, service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/stac/search", json={"intersects": split, "limit": 10})
        assert r.status_code == 200, r.text
        assert {f["properties"]["eostream:scene_id"] for f in r.json()["features"]} == {"fiji"}
    finally:
        await service.stop()
