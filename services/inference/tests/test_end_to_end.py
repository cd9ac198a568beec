"""Real scenes, end to end in-process: SceneDiscovered on the bus -> COG, quicklook, STAC item,
SceneClassified, and REST answers (httpx ASGI transport)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pystac
import pystac.validation
import rasterio
from PIL import Image

from eostream.inference.service import InferenceService
from eostream.inference.stacitem import SOFTWARE_VERSION
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.events import ModelPromoted, SceneClassified, SceneDiscovered
from eostream.shared.modelcard import EUROSAT_CLASSES

from .conftest import AUTH


def scene_event(href: Path, item_id: str, **kw: object) -> SceneDiscovered:
    return SceneDiscovered(
        item_id=item_id,
        item_href=str(href),
        datetime=datetime(2020, 2, 19, tzinfo=UTC),
        processing_level="L2A",
        bands=("B02", "B03", "B04"),
        source_name="test",
        **kw,
    )


async def run_until(bus: InMemoryBus, topic: str, count: int, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while bus.size(topic) < count:
        assert loop.time() < deadline, f"timed out waiting for {count} record(s) on {topic}"
        await asyncio.sleep(0.05)


def classified(bus: InMemoryBus, index: int = -1) -> SceneClassified:
    event = decode(bus._logs[topics.SCENES_CLASSIFIED][index])
    assert isinstance(event, SceneClassified)
    return event


def local(uri: str) -> Path:
    return Path(urlparse(uri).path)


async def test_real_tile_end_to_end(
    service: InferenceService,
    bus: InMemoryBus,
    client: httpx.AsyncClient,
    rkh_item: Path,
    make_model: Callable[..., ModelPromoted],
) -> None:
    promoted = make_model("3")
    await bus.publish(topics.MODELS_PROMOTED, promoted)
    await bus.publish(topics.SCENES_DISCOVERED, scene_event(rkh_item, "S2A_29RKH_20200219_0_L2A"))
    await run_until(bus, topics.SCENES_CLASSIFIED, 1)
    event = classified(bus)
    assert (event.model_name, event.model_version, event.run_id) == ("eurosat", "3", "run3")
    assert event.model_precision == "fp32"
    assert sum(event.class_shares.values()) == pytest_approx(1.0)

    # the COG: whole grid, uint8, nodata 255 only where the SCL says cloud/shadow or data is missing
    with rasterio.open(local(event.cog_href)) as cog:
        labels = cog.read(1)
        assert (cog.width, cog.height, cog.dtypes[0], cog.nodata) == (1098, 1098, "uint8", 255)
        assert cog.overviews(1), "the COG has internal overviews"
        assert cog.colormap(1)[1][:3] == (20, 110, 40)
        assert cog.crs.to_epsg() == 32629
    data_dir = rkh_item.parent
    item = json.loads(rkh_item.read_text())
    scl_path = item["assets"]["scl"]["href"]
    with rasterio.open(scl_path) as scl:
        scl_up = scl.read(1, out_shape=(1098, 1098), resampling=rasterio.enums.Resampling.nearest)
    masked = labels == 255
    assert masked.sum() > 0
    assert not (masked & ~np.isin(scl_up, [0, 3, 8, 9, 10])).any(), "no pixel is left unclassified"
    assert (labels[~masked] < 10).all()
    assert data_dir.exists()

    # the quicklook and the STAC item
    png = Image.open(local(event.quicklook_href or ""))
    assert png.format == "PNG" and png.info["map_box"] == "0,0,549,549"  # <= 1024 px a side
    assert png.info["caption"] == (
        "S2A_29RKH_20200219_0_L2A  |  eurosat v3 (run run3, fp32)"
    )  # the picture names the run and the precision too
    result = json.loads(local(event.result_item_href).read_text())
    props = result["properties"]
    assert props["eostream:model_version"] == "3" and props["eostream:mlflow_run_id"] == "run3"
    assert props["eostream:model_file_sha256"] == props["eostream:model_sha256"] == promoted.sha256
    # the stored item is valid STAC 1.1 (pystac's bundled core schema; extensions are offline):
    # it named a collection without a link to it; the STAC answers add both
    pystac.validation.validate_dict(result, extensions=[])
    assert "collection" not in result
    # the map file names what made it, without its item (a downloaded map)
    with rasterio.open(local(event.cog_href)) as cog:
        tags = cog.tags()
    assert {k: v for k, v in tags.items() if k.startswith("EOSTREAM_")} == {
        "EOSTREAM_SCENE_ID": "S2A_29RKH_20200219_0_L2A",
        "EOSTREAM_MODEL_NAME": "eurosat",
        "EOSTREAM_MODEL_VERSION": "3",
        "EOSTREAM_MLFLOW_RUN_ID": "run3",
        "EOSTREAM_MODEL_SHA256": promoted.sha256,
        "EOSTREAM_MODEL_FILE_SHA256": promoted.sha256,
        "EOSTREAM_MODEL_PRECISION": "fp32",
        "EOSTREAM_SOFTWARE": f"eostream-inference {SOFTWARE_VERSION}",
    }
    assert props["eostream:level_mismatch"].startswith("adapt")
    derived = {link["href"] for link in result["links"] if link["rel"] == "derived_from"}
    assert derived == {rkh_item.as_uri(), promoted.mlm_item_href}  # URIs, not bare paths

    # REST
    r = await client.get("/results/S2A_29RKH_20200219_0_L2A")
    assert r.status_code == 200 and r.json()["model_version"] == "3"
    assert r.json()["model_precision"] == "fp32"
    stats = (await client.get("/results/S2A_29RKH_20200219_0_L2A/statistics")).json()
    assert stats["masked_pixels"] == int(masked.sum())
    assert set(stats["classes"]) == set(EUROSAT_CLASSES)
    area = sum(c["area_km2"] for c in stats["classes"].values())
    assert 10000 < area < 109.8**2  # a 109.8 km tile, less its clouds
    cog = await client.get("/results/S2A_29RKH_20200219_0_L2A/cog")
    assert cog.status_code == 200 and cog.content[:4] in (b"II*\x00", b"II+\x00")
    ql = await client.get("/results/S2A_29RKH_20200219_0_L2A/quicklook")
    assert Image.open(io.BytesIO(ql.content)).info["map_box"] == "0,0,549,549"
    top = max(event.class_shares, key=lambda k: event.class_shares[k])
    hits = (await client.get("/results", params={"class": top, "min_share": 0.5})).json()
    assert [h["scene_id"] for h in hits["results"]] == ["S2A_29RKH_20200219_0_L2A"]
    none = await client.get("/results", params={"class": top, "min_share": 1.01})
    assert none.status_code == 422
    nohit = (await client.get("/results", params={"bbox": "0,0,1,1"})).json()
    assert nohit["total"] == 0
    hit = (
        await client.get(
            "/results", params={"bbox": "-12,24,-11,25", "datetime": "2020-02-01T00:00:00Z/.."}
        )
    ).json()
    assert hit["total"] == 1
    models = (await client.get("/models")).json()
    assert models["deployed"]["version"] == "3" and models["history"][0]["status"] == "live"

    # idempotent on (scene, model version): a duplicate is not classified again, only announced
    # again with the same event id (a crash between result and event must not lose the event);
    # replace recomputes, and that is news with an id of its own
    await bus.publish(topics.SCENES_DISCOVERED, scene_event(rkh_item, "S2A_29RKH_20200219_0_L2A"))
    await bus.publish(
        topics.SCENES_DISCOVERED, scene_event(rkh_item, "S2A_29RKH_20200219_0_L2A", replace=True)
    )
    await run_until(bus, topics.SCENES_CLASSIFIED, 3)
    await asyncio.sleep(0.2)
    first, again, replaced = (decode(m) for m in bus.records(topics.SCENES_CLASSIFIED))
    assert first.id == again.id != replaced.id
    assert (await client.get("/results")).json()["total"] == 1


async def test_boadella_crop_in_epsg4326_with_its_own_band_order(
    service: InferenceService,
    bus: InMemoryBus,
    client: httpx.AsyncClient,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await bus.publish(topics.MODELS_PROMOTED, make_model("1", band_set="ms13"))
    href = boadella_item("2020-06-21")
    await bus.publish(topics.SCENES_DISCOVERED, scene_event(href, "boadella-2020-06-21"))
    await run_until(bus, topics.SCENES_CLASSIFIED, 1)
    event = classified(bus)
    with rasterio.open(local(event.cog_href)) as cog:
        labels = cog.read(1)
        assert (cog.width, cog.height) == (380, 377) and cog.crs.to_epsg() == 4326
    assert ((labels < 10) | (labels == 254)).all(), "no nodata in a crop without nodata"
    stats = (await client.get("/results/boadella-2020-06-21/statistics")).json()
    assert stats["masked_pixels"] == 0
    area = sum(c["area_km2"] for c in stats["classes"].values()) + stats["uncertain"]["area_km2"]
    assert 10 < area < 16  # 380x377 px of ~10 m: about 14.2 km2
    item = (await client.get("/results/boadella-2020-06-21/item")).json()
    assert any("B10" in note for note in item["properties"]["eostream:adaptations"])


def test_reader_feeds_each_model_band_from_the_right_file_band(
    boadella_item: Callable[[str], Path],
    settings: object,
) -> None:
    """Boadella stores B8A before B09 and has no B10: the ms13 (EuroSAT order) input must take
    file band 9 for B8A, 10 for B09, a constant for B10, with reflectance x 10000 units."""
    from eostream.inference import testing
    from eostream.inference.fetch import gdal_env
    from eostream.inference.scene import SceneReader, prepare_scene

    card = testing.model_card("ms13")
    href = boadella_item("2020-06-21")
    item = json.loads(href.read_text())
    plan = prepare_scene(item, str(href), card, policy="adapt", b10_fill=0.0015)
    with SceneReader(plan, card, gdal_env(None), max_pixels=10**8) as reader:
        units, invalid = reader.read(100, 164)
    tif = item["assets"]["data"]["href"]
    with rasterio.open(tif) as ds:
        dn = ds.read(window=rasterio.windows.Window(0, 100, 380, 64)).astype(np.float32)
    file_band = {
        b: i
        for i, b in enumerate(
            ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
        )
    }
    for channel, band in enumerate(card.bands):
        if band == "B10":
            assert np.allclose(units[channel], 15.0)
        else:
            np.testing.assert_allclose(
                units[channel], np.clip(dn[file_band[band]], 0, 20000), atol=0.01
            )
    assert card.bands[-1] == "B8A" and not invalid.any()


async def test_processes_and_on_demand_item(
    service: InferenceService,
    client: httpx.AsyncClient,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("2"))
    listing = (await client.get("/processes")).json()
    assert listing["processes"][0]["id"] == "classify-scene"
    href = str(boadella_item("2020-09-14"))
    denied = await client.post(
        "/processes/classify-scene/execution", json={"inputs": {"item_href": href}}
    )
    assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
    ok = await client.post(
        "/processes/classify-scene/execution",
        json={"inputs": {"item_href": href}},
        headers={"Authorization": f"Bearer {AUTH['X-API-Key']}"},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["result"]["scene_id"] == "boadella-2020-09-14"
    again = await client.post("/classify/item", json={"item_href": href}, headers=AUTH)
    assert again.status_code == 200 and again.json()["skipped"] is True


def pytest_approx(value: float) -> object:
    import pytest

    return pytest.approx(value, abs=1e-3)


async def test_probability_cog_when_asked(
    settings: object, boadella_item: Callable[[str], Path], make_model: Callable[..., ModelPromoted]
) -> None:
    from eostream.inference.wiring import build_service

    # a random-weight model is unsure everywhere: keep every pixel's class to compare
    cfg = settings.model_copy(update={"write_probabilities": True, "uncertain_below": 0.0})  # type: ignore[attr-defined]
    svc = build_service(cfg, consume=False)
    await svc.start()
    try:
        await asyncio.to_thread(svc.deployment.deploy, make_model("1"))
        outcome = await asyncio.to_thread(
            svc.pipeline.classify_href, str(boadella_item("2020-06-21"))
        )
    finally:
        await svc.stop()
    href = outcome.record.item["assets"]["probabilities"]["href"]
    with (
        rasterio.open(local(href)) as probs,
        rasterio.open(local(outcome.record.item["assets"]["classification"]["href"])) as cls,
    ):
        p, labels = probs.read(), cls.read(1)
        assert probs.count == 10 and probs.descriptions[1] == "Forest"
    assert (p.argmax(axis=0) == labels).mean() > 0.99  # the class is the most probable one
    assert abs(p.sum(axis=0).astype(int) - 254).max() <= 10
