"""Two registered models with the same version number classify one scene: MLflow numbers
versions per registered model, so v3 of ``eurosat`` and v3 of ``other`` are different results,
and every lookup that knows the model (the pipeline's skip check, /results, the item, its asset
files, the tiles, the published STAC item) finds that model's own. A lookup by version alone
answers the scene's newest result of that version, whichever model made it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import morecantile
import pytest
import sqlalchemy as sa

from eostream.inference.catalog import published_item
from eostream.inference.pipeline import Outcome
from eostream.inference.results import ResultRecord, ResultsStore, build_results_store
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.tables import classes_table, results_table
from eostream.shared.events import ModelPromoted

SCENE = "boadella-2020-06-21"
CENTRE = (2.815, 42.3476)  # the reservoir, inside the scene
Z = 14


# -- the index ------------------------------------------------------------------------------
def _record(scene: str, model: str, version: str, created: datetime) -> ResultRecord:
    return ResultRecord(
        id=f"{scene}__{model}__v{version}",
        scene_id=scene,
        model_name=model,
        model_version=version,
        run_id=f"run-{model}",
        datetime=datetime(2020, 6, 21, 10, 30, tzinfo=UTC),
        bbox=(2.7, 42.3, 2.9, 42.4),
        prefix=f"results/{scene}/{model}/v{version}",
        item={"id": f"{scene}__{model}__v{version}"},
        stats={"classes": {"Forest": {"share": 1.0, "area_km2": 1.0}}},
        created=created,
    )


def _check_lookups(store: ResultsStore, scene: str) -> None:
    tied = f"{scene}-tied"
    scenes = [scene, tied]
    try:
        t0 = datetime(2024, 1, 1, tzinfo=UTC)
        store.put(_record(scene, "eurosat", "3", t0))
        store.put(_record(scene, "other", "3", t0 + timedelta(seconds=1)))

        for model in ("eurosat", "other"):
            mine = store.get(scene, "3", model_name=model)
            assert mine is not None and mine.model_name == model
            assert store.exists(scene, model, "3")
        assert store.get(scene, "3", model_name="nobody") is None
        # by version alone: the newest of that version (other's, written a second later)
        newest = store.get(scene, "3")
        assert newest is not None and newest.model_name == "other"
        # by model alone: that model's newest
        alone = store.get(scene, model_name="eurosat")
        assert alone is not None and alone.model_version == "3"

        # created at the same instant: the smaller item id, whatever order they were written in
        store.put(_record(tied, "other", "3", t0))
        store.put(_record(tied, "eurosat", "3", t0))
        first = store.get(tied, "3")
        assert first is not None and first.model_name == "eurosat"
        store.put(_record(tied, "other", "3", t0))  # rewritten: still the same answer
        again = store.get(tied, "3")
        assert again is not None and again.model_name == "eurosat"
    finally:
        with store.engine.begin() as conn:  # the stack's index is shared: leave it as found
            ids = sa.select(results_table.c.id).where(results_table.c.scene_id.in_(scenes))
            conn.execute(classes_table.delete().where(classes_table.c.result_id.in_(ids)))
            conn.execute(results_table.delete().where(results_table.c.scene_id.in_(scenes)))
        store.close()


def test_lookups_by_model_and_version_on_sqlite(tmp_path: Path) -> None:
    _check_lookups(build_results_store(f"sqlite:///{tmp_path}/results.db"), "S")


@pytest.mark.stack
def test_lookups_by_model_and_version_on_postgresql() -> None:
    dsn = os.environ.get("EOSTREAM_PG_DSN")
    if not dsn:
        pytest.fail('EOSTREAM_PG_DSN is not set: eval "$(deploy/local/stack env)"')
    store = build_results_store(dsn.rstrip("/") + "/results")
    _check_lookups(store, f"same-version-{uuid.uuid4().hex[:12]}")


# -- the service ----------------------------------------------------------------------------
def _tile_path(scene: str) -> str:
    t = morecantile.tms.get("WebMercatorQuad").tile(*CENTRE, Z)
    return f"/tiles/results/{scene}/tiles/WebMercatorQuad/{Z}/{t.x}/{t.y}.png"


async def _classify(service: InferenceService, event: ModelPromoted, href: str) -> Outcome:
    await asyncio.to_thread(service.deployment.deploy, event)
    outcome: Outcome = await asyncio.to_thread(service.pipeline.classify_href, href)
    return outcome


async def _ok(client: httpx.AsyncClient, url: str, **params: str) -> httpx.Response:
    r = await client.get(url, params=params) if params else await client.get(url)
    assert r.status_code == 200, (url, params, r.text)
    return r


async def test_two_models_with_one_version_keep_their_own_results(
    client: httpx.AsyncClient,
    service: InferenceService,
    settings: InferenceSettings,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    href = str(boadella_item("2020-06-21"))
    eurosat_v3 = make_model("3")
    mine = await _classify(service, eurosat_v3, href)
    assert not mine.skipped and mine.record.model_name == "eurosat"
    tile = _tile_path(SCENE)
    eurosat_tile = (await _ok(client, tile)).content  # the only result yet

    # another registered model, also at version 3 (other weights): its own result, not a skip
    theirs = await _classify(service, make_model("3", name="other", seed=11), href)
    assert not theirs.skipped and theirs.record.model_name == "other"
    assert theirs.record.prefix != mine.record.prefix

    # eurosat v3 again: the skip check finds eurosat's result, and the event names eurosat
    again = await _classify(service, eurosat_v3, href)
    assert again.skipped and again.record == mine.record
    event = again.event(service.pipeline.store)
    assert (event.model_name, event.model_version) == ("eurosat", "3")
    assert event.cog_href == mine.record.item["assets"]["classification"]["href"]

    store = service.pipeline.store
    cogs = {
        o.record.model_name: store.get_bytes(f"{o.record.prefix}/classification.tif")
        for o in (mine, theirs)
    }
    assert cogs["eurosat"] != cogs["other"]  # else the file checks below could not tell

    for outcome in (mine, theirs):
        record = outcome.record
        model = record.model_name
        which = {"model_version": "3", "model_name": model}
        summary = (await _ok(client, f"/results/{SCENE}", **which)).json()
        assert (summary["model_name"], summary["id"]) == (model, record.id)
        for key in ("self", "item", "statistics", "cog"):  # the links name the model too
            linked = await _ok(client, summary["links"][key])
            if key == "item":
                assert linked.json()["properties"]["eostream:model_name"] == model
            if key == "cog":
                assert linked.content == cogs[model]
        item = (await _ok(client, f"/results/{SCENE}/item", **which)).json()
        assert item["properties"]["eostream:model_name"] == model
        # served as the STAC API serves it: hrefs a client can follow, not the store's paths
        asset = item["assets"]["classification"]
        assert asset["href"].startswith("http://test/results/"), asset
        assert asset["alternate"]["storage"]["href"].startswith("file://"), asset
        self_link = next(link["href"] for link in item["links"] if link["rel"] == "self")
        assert (
            self_link == f"http://test/stac/collections/{settings.collection_id}/items/{record.id}"
        )
        stats = (await _ok(client, f"/results/{SCENE}/statistics", **which)).json()
        assert stats == record.stats
        cog = await _ok(client, f"/results/{SCENE}/cog", **which)
        assert cog.content == cogs[model]
        # the area's maps link to this model's map, not the newest of any model's version 3
        assert record.bbox is not None
        box = ",".join(str(v) for v in record.bbox)
        areas = (await _ok(client, "/results/aggregate", bbox=box, **which)).json()
        [day] = areas["dates"]
        assert [(await _ok(client, link)).content for link in day["maps"]] == [cogs[model]]
        assert day["map_classes"] == [list(record.stats["classes"])]
        # and the change of a date in the area is between this model's maps
        assert record.datetime is not None
        when = record.datetime.date().isoformat()
        change = await _ok(client, "/results/change", a=when, b=when, bbox=box, **which)
        assert (change.json()["a"], change.json()["b"]) == (record.id, record.id)

        # the item as STAC serves it: asset hrefs name the model in the path, and answer
        stac = (
            await _ok(client, f"/stac/collections/{settings.collection_id}/items/{record.id}")
        ).json()
        asset = stac["assets"]["classification"]["href"]
        assert f"/results/{SCENE}/files/{model}/3/classification.tif" in asset
        assert (await _ok(client, asset)).content == cogs[model]
        part = await client.get(asset, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == cogs[model][:100]
        head = await client.head(asset)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(cogs[model])
        sidecar = await _ok(client, asset + ".aux.xml")  # GDAL's PAM sidecar, beside the COG
        assert "<Category>" in sidecar.text
        quicklook = stac["assets"]["quicklook"]["href"]
        assert (await _ok(client, quicklook)).content == store.get_bytes(
            f"{record.prefix}/quicklook.png"
        )

        # published into the stack's STAC API: the same hrefs, and a link back naming the model
        published = published_item(record, "results", "http://maps.example.org")
        assert published["assets"]["classification"]["href"] == (
            f"http://maps.example.org/results/{SCENE}/files/{model}/3/classification.tif"
        )
        back = next(link for link in published["links"] if link["rel"] == "alternate")
        assert f"model_name={model}" in back["href"] and "model_version=3" in back["href"]

    # tiles: each model's map; eurosat's is the one drawn before the other model's existed
    for_eurosat = await _ok(client, tile, model_version="3", model_name="eurosat")
    assert for_eurosat.content == eurosat_tile
    for_other = await _ok(client, tile, model_version="3", model_name="other")
    assert for_other.content != eurosat_tile
    tilejson = (
        await _ok(
            client,
            f"/tiles/results/{SCENE}/WebMercatorQuad/tilejson.json",
            model_version="3",
            model_name="eurosat",
        )
    ).json()
    assert "model_name=eurosat" in tilejson["tiles"][0]
    truecolour = f"/tiles/scenes/{SCENE}/WebMercatorQuad/tilejson.json"
    await _ok(client, truecolour, model_version="3", model_name="other")

    # by version alone, as the older routes and items ask: the newest of v3 (other's)
    newest = (await _ok(client, f"/results/{SCENE}", model_version="3")).json()
    assert newest["model_name"] == "other"
    old_href = f"/results/{SCENE}/files/3/classification.tif"
    assert (await _ok(client, old_href)).content == cogs["other"]
    assert (await _ok(client, old_href, model_name="eurosat")).content == cogs["eurosat"]
    by_version = f"/tiles/results/{SCENE}/WebMercatorQuad/tilejson.json"
    assert (await _ok(client, by_version, model_version="3")).json()["tiles"]

    # a model that never classified the scene: 404, with the shared error body
    for url in (
        f"/results/{SCENE}",
        f"/results/{SCENE}/item",
        f"/results/{SCENE}/cog",
        f"/results/{SCENE}/files/nobody/3/classification.tif",
        tile,
    ):
        missing = await client.get(url, params={"model_version": "3", "model_name": "nobody"})
        assert missing.status_code == 404, url
        assert set(missing.json()) == {"code", "description"}
        assert "nobody" in missing.json()["description"]


def test_a_model_less_item_keeps_its_version_only_file_urls() -> None:
    """An item without a model name (none is written so; a hand-made one) still gets hrefs."""
    from eostream.inference.stacitem import public_item

    item: dict[str, Any] = {
        "properties": {"eostream:scene_id": "S", "eostream:model_version": "3"},
        "assets": {"classification": {"href": "s3://bucket/results/S/m/v3/classification.tif"}},
    }
    served = public_item(item, "http://maps.example.org/")
    href = served["assets"]["classification"]["href"]
    assert href == "http://maps.example.org/results/S/files/3/classification.tif"
    named = public_item(
        {**item, "properties": {**item["properties"], "eostream:model_name": "land cover"}},
        "http://maps.example.org",
    )
    assert named["assets"]["classification"]["href"] == (
        "http://maps.example.org/results/S/files/land%20cover/3/classification.tif"
    )


async def test_a_scenes_map_is_the_served_models_not_a_newer_what_if(
    client: httpx.AsyncClient,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    """A request that names no version gets the served model's result: an old model's result
    written later (an OGC job naming v1, a what-if) does not become the scene's map, its tiles
    or its place in the area's time series; asked for, it is still there."""
    href = str(boadella_item("2020-06-21"))
    old = (await _classify(service, make_model("1"), href)).record
    served = (await _classify(service, make_model("2", seed=5), href)).record
    assert service.deployment.current is not None
    assert service.deployment.current.info.version == "2"
    # v1's result made again after v2's, as a what-if run of v1 writes it (newest created)
    later = dataclasses.replace(old, created=datetime.now(UTC) + timedelta(hours=1))
    service.results.put(later)
    assert (r := service.results.get(SCENE)) is not None and r.model_version == "1"  # newest

    summary = (await _ok(client, f"/results/{SCENE}")).json()
    assert summary["id"] == served.id
    item = (await _ok(client, f"/results/{SCENE}/item")).json()
    assert item["properties"]["eostream:model_version"] == "2"
    asked = (await _ok(client, f"/results/{SCENE}", model_version="1")).json()
    assert asked["id"] == old.id
    assert served.bbox is not None
    box = ",".join(str(v) for v in served.bbox)
    [day] = (await _ok(client, "/results/aggregate", bbox=box)).json()["dates"]
    assert day["results"] == [served.id]
    when = "2020-06-21"
    change = (await _ok(client, "/results/change", a=when, b=when, bbox=box)).json()
    assert (change["a"], change["b"]) == (served.id, served.id)
    tile = _tile_path(SCENE)
    assert (
        (await _ok(client, tile)).content
        == (await _ok(client, tile, model_version="2", model_name="eurosat")).content
        != (await _ok(client, tile, model_version="1", model_name="eurosat")).content
    )

    # a served model that never mapped the scene: the newest result, as before
    await asyncio.to_thread(service.deployment.deploy, make_model("3", seed=6))
    newest = (await _ok(client, f"/results/{SCENE}")).json()
    assert newest["id"] == old.id
