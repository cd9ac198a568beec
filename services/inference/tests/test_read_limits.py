"""Unauthenticated reads that load maps or records are bounded (the audit's out-of-memory
finding): the pixels one /results/aggregate or /results/change request may read (413 naming the
limit and how to narrow it, decided from the results' sizes and footprints before any map is
read), the pixels they read at once (503 with Retry-After, not a queue in the threadpool), the
records a filtered, intersected or sorted /stac search loads (413). Requests within the limits,
and every one under the defaults, answer 200. Maps are small real UTM COGs written by the
service's own writer and indexed as results; no model is needed."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from affine import Affine
from pydantic import SecretStr
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from eostream.inference import area_query, areas, writer
from eostream.inference.api.app import create_app
from eostream.inference.engine import NODATA
from eostream.inference.results import ResultRecord
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.bus.base import RetryPolicy
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.storage.base import ObjectStore
from eostream.shared.storage.local import LocalObjectStore

UTM = CRS.from_epsg(32631)
CLASSES = ("Forest", "SeaLake")
ORIGIN = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_690_000.0)  # 10 m pixels near 42.3 N
SIZE = 100  # pixels a side: 10,000 a map
DATES = ("2021-01-10", "2021-02-10", "2021-03-10", "2021-04-10", "2021-05-10")
FOOTPRINT = transform_bounds(UTM, "EPSG:4326", 500_000.0, 4_689_000.0, 501_000.0, 4_690_000.0)


def limited(root: Path, **limits: Any) -> InferenceSettings:
    return InferenceSettings(
        api_key=SecretStr("limits-key"),
        bus="memory",
        store="local",
        local_store_root=root / "objects",
        results_db=f"sqlite:///{root}/results.db",
        _env_file=None,
        **limits,
    )


def _map(seed: int) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, 2, (SIZE, SIZE)).astype(np.uint8)
    labels[0, :10] = 254  # uncertain
    labels[-1, -10:] = 255  # nodata
    return labels


def _record(store: ObjectStore, tmp: Path, day: str, labels: np.ndarray) -> ResultRecord:
    scene = f"scene-{day}"
    prefix = f"results/{scene}/limits/v1"
    path = tmp / f"{scene}.tif"
    writer.write_classification(path, labels, ORIGIN, UTM, CLASSES)
    store.put_bytes(f"{prefix}/classification.tif", path.read_bytes())
    minx, miny, maxx, maxy = FOOTPRINT
    ring = [[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny]]
    when = datetime.fromisoformat(f"{day}T10:30:00+00:00")
    props = {
        "datetime": when.isoformat().replace("+00:00", "Z"),
        "eostream:scene_id": scene,
        "eostream:model_name": "limits",
        "eostream:model_version": "1",
    }
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"{scene}-limits-v1",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": list(FOOTPRINT),
        "properties": props,
        "assets": {},
        "links": [],
    }
    stats = writer.statistics(labels, CLASSES, 1e-4)
    return ResultRecord(
        id=item["id"], scene_id=scene, model_name="limits", model_version="1", run_id=None,
        datetime=when, bbox=FOOTPRINT, prefix=prefix, item=item, stats=stats,
        created=datetime(2024, 1, 1, tzinfo=UTC),
    )  # fmt: skip


class HeldStore:
    """The local store, whose reads wait while ``held`` is clear (a slow read in flight)."""

    def __init__(self, inner: LocalObjectStore) -> None:
        self.inner, self.held, self.waiting = inner, threading.Event(), threading.Event()
        self.held.set()

    def get_bytes(self, key: str) -> bytes:
        self.waiting.set()
        assert self.held.wait(10), "the test never released the read"
        return self.inner.get_bytes(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@asynccontextmanager
async def served(
    settings: InferenceSettings, tmp: Path, store: Any = None
) -> AsyncIterator[tuple[httpx.AsyncClient, list[ResultRecord]]]:
    """The API over five indexed maps (one a month; the first and last are equal)."""
    store = store or LocalObjectStore(tmp / "objects", "eostream")
    bus = InMemoryBus(service="inference", policy=RetryPolicy(max_retries=0, backoff_seconds=0))
    service = build_service(settings, bus=bus, store=store)
    await service.start()
    try:
        maps = [_map(i % 4) for i in range(len(DATES))]
        records = [_record(store, tmp, d, m) for d, m in zip(DATES, maps, strict=True)]
        for record in records:
            service.results.put(record)
        app = create_app(settings, service)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, records
    finally:
        await service.stop()


def _box(share: float) -> str:
    """A bbox over the west ``share`` of the maps."""
    minx, miny, maxx, maxy = FOOTPRINT
    return f"{minx},{miny},{minx + (maxx - minx) * share},{maxy}"


WHOLE = _box(1.0)


# -- /results/change and /results/aggregate: pixels one request reads ------------------------
async def test_reads_over_the_pixel_limit_are_413_naming_it_and_how_to_narrow(
    tmp_path: Path,
) -> None:
    async with served(limited(tmp_path, area_max_pixels=15_000), tmp_path) as (client, recs):
        a, b = recs[0].id, recs[1].id
        r = await client.get("/results/change", params={"a": a, "b": b})
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["code"] == "too_large"
        assert "15,000" in body["description"] and "20,000" in body["description"]
        assert "give an area" in body["description"]
        r = await client.get("/results/change/map", params={"a": a, "b": b, "f": "tif"})
        assert r.status_code == 413 and "15,000" in r.json()["description"]
        # an area around part of the maps is within the limit
        r = await client.get("/results/change", params={"a": a, "b": b, "bbox": _box(0.5)})
        assert r.status_code == 200, r.text
        assert 0 < r.json()["compared_pixels"] < SIZE * SIZE
        r = await client.get("/results/change/map", params={"a": a, "b": b, "bbox": _box(0.5)})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"

        r = await client.get("/results/aggregate", params={"bbox": WHOLE})
        assert r.status_code == 413, r.text
        description = r.json()["description"]
        assert "15,000" in description and "5 result map(s)" in description
        assert "smaller area" in description and "datetime" in description
        r = await client.post("/results/aggregate", json={"bbox": [float(v) for v in FOOTPRINT]})
        assert r.status_code == 413 and r.json()["code"] == "too_large"
        # a shorter datetime range, or a smaller area, is within it
        one = {"bbox": WHOLE, "datetime": "2021-01-01T00:00:00Z/2021-01-31T00:00:00Z"}
        r = await client.get("/results/aggregate", params=one)
        assert r.status_code == 200, r.text
        assert [d["area_pixels"] for d in r.json()["dates"]] == [SIZE * SIZE]
        r = await client.get("/results/aggregate", params={"bbox": _box(0.2)})
        assert r.status_code == 200 and len(r.json()["dates"]) == len(DATES)


async def test_under_the_defaults_whole_maps_are_compared_and_summed(tmp_path: Path) -> None:
    async with served(limited(tmp_path), tmp_path) as (client, recs):
        a, b = recs[0].id, recs[-1].id  # equal maps: nothing changed
        r = await client.get("/results/change", params={"a": a, "b": b})
        assert r.status_code == 200, r.text
        found = r.json()
        labelled = int((_map(0) != 255).sum())
        assert found["compared_pixels"] == labelled and found["changed_km2"] == 0
        r = await client.get("/results/change", params={"a": recs[0].id, "b": recs[1].id})
        pixels = np.array(r.json()["pixels"])
        first, second = _map(0), _map(1)
        both = (first != 255) & (second != 255)
        assert pixels.sum() == both.sum()
        assert pixels[0, 1] == ((first == 0) & (second == 1)).sum()
        r = await client.get("/results/change/map", params={"a": a, "b": b, "f": "tif"})
        assert r.status_code == 200 and r.content[:2] in (b"II", b"MM")
        r = await client.get("/results/aggregate", params={"bbox": WHOLE, "f": "csv"})
        assert r.status_code == 200 and r.text.count("\n") == 1 + len(DATES) * 3


# -- the pixels all of them read at once ---------------------------------------------------------
async def test_a_read_while_others_fill_the_budget_is_503_with_retry_after(
    tmp_path: Path,
) -> None:
    store = HeldStore(LocalObjectStore(tmp_path / "objects", "eostream"))
    settings = limited(tmp_path, area_pixels_in_flight=15_000)
    async with served(settings, tmp_path, store) as (client, recs):
        a, b = recs[0].id, recs[1].id
        store.held.clear()
        first = asyncio.create_task(client.get("/results/change", params={"a": a, "b": b}))
        assert await asyncio.to_thread(store.waiting.wait, 30)  # 20,000 pixels in flight
        r = await client.get("/results/aggregate", params={"bbox": _box(0.5)})
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "5"
        assert r.json()["code"] == "unavailable" and "retry" in r.json()["description"]
        store.held.set()
        assert (await first).status_code == 200  # alone, over the budget, it still runs
        r = await client.get("/results/aggregate", params={"bbox": _box(0.5)})
        assert r.status_code == 200, r.text  # once the read is done, the budget is free


# -- /stac/search: records loaded to filter, intersect or sort --------------------------------
async def test_a_sorted_or_filtered_search_over_too_many_records_is_413(tmp_path: Path) -> None:
    async with served(limited(tmp_path, stac_max_candidates=3), tmp_path) as (client, _):
        triangle = [[-10, 30], [10, 30], [10, 50], [-10, 30]]
        for r in (
            await client.get("/stac/search", params={"sortby": "-eostream:model_version"}),
            await client.post("/stac/search", json={"filter": "eostream:model_version = '1'"}),
            await client.post(
                "/stac/search", json={"intersects": {"type": "Polygon", "coordinates": [triangle]}}
            ),
        ):
            assert r.status_code == 413, r.text
            description = r.json()["description"]
            assert r.json()["code"] == "too_large"
            assert "5 results" in description and "at most 3" in description
            assert "narrow" in description and "datetime" in description
        # a narrower search, and those the index sorts and pages alone, answer
        narrow = {
            "sortby": "-eostream:model_version,-datetime",
            "datetime": "2021-01-01T00:00:00Z/2021-03-01T00:00:00Z",
        }
        r = await client.get("/stac/search", params=narrow)
        assert r.status_code == 200, r.text
        assert [f["properties"]["datetime"][:10] for f in r.json()["features"]] == [
            "2021-02-10",
            "2021-01-10",
        ]
        r = await client.get("/stac/search")
        assert r.status_code == 200 and r.json()["numberMatched"] == len(DATES)


async def test_a_search_sorted_by_datetime_or_id_is_sorted_by_the_index_past_the_cap(
    tmp_path: Path,
) -> None:
    """``datetime`` and ``id`` are the index's columns: it sorts and pages by them itself, so
    every record is reachable however many match (they were loaded and sorted here, 413 past
    ``STAC_MAX_CANDIDATES``)."""
    async with served(limited(tmp_path, stac_max_candidates=3), tmp_path) as (client, recs):
        for sortby, key, newest_first in (
            ("-datetime", "datetime", True),
            ("+properties.datetime", "datetime", False),
            ("-id", "id", True),
        ):
            seen: list[str] = []
            url, params = "/stac/search", {"sortby": sortby, "limit": "2"}
            while url:
                r = await client.get(url, params=params or None)  # {} would drop the query
                assert r.status_code == 200, r.text
                page = r.json()
                assert page["numberMatched"] == len(DATES)
                seen += [f[key] if key == "id" else f["properties"][key] for f in page["features"]]
                url = next((ln["href"] for ln in page["links"] if ln["rel"] == "next"), "")
                params = {}
            assert len(seen) == len(recs) == len(DATES)
            assert seen == sorted(seen, reverse=newest_first), (sortby, seen)
        r = await client.post(
            "/stac/search", json={"sortby": [{"field": "datetime", "direction": "desc"}]}
        )
        assert r.status_code == 200 and r.json()["numberMatched"] == len(DATES)
        dates = [f["properties"]["datetime"][:10] for f in r.json()["features"]]
        assert dates == sorted(DATES, reverse=True)


async def test_under_the_defaults_a_sorted_search_answers_every_record(tmp_path: Path) -> None:
    async with served(limited(tmp_path), tmp_path) as (client, _):
        r = await client.get("/stac/search", params={"sortby": "datetime", "limit": 2})
        assert r.status_code == 200, r.text
        assert r.json()["numberMatched"] == len(DATES)
        assert r.json()["features"][0]["properties"]["datetime"].startswith(DATES[0])


# -- the arrays: blocks of rows give the whole-map answer in bounded memory ---------------------
def _naive(
    a: np.ndarray, b: np.ndarray, inside: np.ndarray, row_km2: np.ndarray, values: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    n = len(values)
    pixels, km2 = np.zeros((n, n), np.int64), np.zeros((n, n))
    for i, va in enumerate(values):
        for j, vb in enumerate(values):
            hit = inside & (a == va) & (b == vb)
            pixels[i, j] = hit.sum()
            km2[i, j] = (hit * row_km2[:, None]).sum()
    return pixels, km2


def test_transitions_and_counts_in_blocks_equal_the_whole_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(areas, "BLOCK_PIXELS", 1000)  # many blocks of 7 rows
    rng = np.random.default_rng(7)
    a = rng.choice([0, 1, 2, 254, 255], size=(301, 143)).astype(np.uint8)
    b = rng.choice([0, 1, 2, 254, 255], size=(301, 143)).astype(np.uint8)
    inside = rng.random((301, 143)) > 0.3
    row_km2 = rng.random(301)
    values = [0, 1, 2, 254]
    pixels, km2 = areas.transitions(a, b, inside, row_km2, values)
    want_pixels, want_km2 = _naive(a, b, inside, row_km2, values)
    assert pixels.tolist() == want_pixels.tolist()
    assert km2 == pytest.approx(want_km2)
    counts = areas.count(a, inside, row_km2)
    assert counts.pixels.tolist() == np.bincount(a[inside], minlength=256).tolist()
    weights = np.broadcast_to(row_km2[:, None], a.shape)[inside]
    assert counts.km2 == pytest.approx(np.bincount(a[inside], weights=weights, minlength=256))


def _peak(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_transitions_of_a_large_map_need_little_memory_beyond_the_maps() -> None:
    side = 4096  # 16.8 M pixels: the whole-map arrays took ~33 bytes a pixel (550 MB)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, (side, side), dtype=np.uint8)
    b = rng.integers(0, 4, (side, side), dtype=np.uint8)
    everywhere = np.broadcast_to(np.True_, a.shape)  # what read_area gives without an area
    row_km2 = np.full(side, 1e-4)
    peak = _peak(lambda: areas.transitions(a, b, everywhere, row_km2, [0, 1, 2, 254]))
    assert peak < 2 * side * side, f"{peak / side / side:.1f} bytes a pixel"
    peak = _peak(lambda: areas.count(a, everywhere, row_km2))
    assert peak < 2 * side * side, f"{peak / side / side:.1f} bytes a pixel"


def test_the_areas_of_a_date_need_little_memory_beyond_the_map() -> None:
    """An aggregate's date sums its maps' counts: no array of pixel areas the size of the window
    (8 bytes a pixel: with the labels and the area mask, ~11 at the peak)."""
    side = 4096
    labels = np.random.default_rng(2).integers(0, 4, (side, side), dtype=np.uint8)
    labels[:100] = NODATA
    row_km2 = np.linspace(1e-4, 2e-4, side)
    found = areas.AreaMap(
        labels=labels,
        inside=np.broadcast_to(np.True_, labels.shape),
        row_km2=row_km2,
        window=Window(0, 0, side, side),
        transform=Affine.identity(),
        crs=None,
        shape=(side, side),
    )
    stats: dict[str, Any] = {"classes": {n: {} for n in ("Forest", "River", "SeaLake", "Urban")}}
    record = ResultRecord(
        id="r", scene_id="s", model_name="limits", model_version="1", run_id=None,
        datetime=datetime(2024, 5, 1, tzinfo=UTC), bbox=FOOTPRINT, prefix="p", item={},
        stats=stats,
    )  # fmt: skip
    day = area_query.DateAreas(datetime(2024, 5, 1).date())
    peak = _peak(lambda: day.add(record, found))
    assert peak < 2 * side * side, f"{peak / side / side:.1f} bytes a pixel"
    assert day.area_pixels == side * side and day.nodata_pixels == 100 * side
    assert day.area_km2 == pytest.approx(float(row_km2.sum()) * side)
    in_classes = sum(int(c["pixels"]) for c in day.classes.values())
    assert in_classes + day.nodata_pixels == day.area_pixels


def _area(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def test_the_estimate_errs_high_where_it_cannot_tell() -> None:
    """A footprint across the antimeridian, an area that misses the footprint box (a partial
    tile's map is larger than its scene's box) and a thin strip (the window read is the strip's
    box turned into the map's UTM grid) are charged enough, never 0."""
    tile = 10980 * 10980
    footprint = (2.0, 42.0, 3.0, 43.0)
    fiji = _area(179.2, -17.0, 179.3, -16.9)
    assert areas.window_pixels(tile, (179.0, -17.5, -179.5, -16.5), fiji) == tile
    assert areas.window_pixels(tile, footprint, _area(10.0, 10.0, 10.1, 10.1)) == tile
    naive = tile * 0.0001  # a strip's width's share of the footprint, times its full height
    assert areas.window_pixels(tile, footprint, _area(2.5, 42.0, 2.5001, 43.0)) > 50 * naive
    quarter = areas.window_pixels(tile, footprint, _area(2.0, 42.0, 2.5, 42.5))
    assert 0.25 * tile < quarter < 0.4 * tile
