"""Scene tiles read only allowed sources. The true-colour routes need no API key and read the
scene's item again (by the link its result keeps) for every tile: an item classified while it was
allowed, then changed to name bands elsewhere (a local file outside the allowed roots, an internal
URL), is refused with 422 before any band is opened, on every scene route."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from eostream.inference import testing
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings, SourcesSettings
from eostream.shared.events import ModelPromoted

from .conftest import API_KEY, AUTH, BOADELLA_BANDS

BOADELLA = "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2/Boadella_2020-06-21.tif"
CENTRE = (2.815, 42.3476)  # the reservoir, inside the scene
Z = 14


@pytest.fixture
def settings(tmp_path: Path) -> InferenceSettings:
    """Only tmp_path/allowed (besides the data folder and the service's store) may be named."""
    (tmp_path / "allowed").mkdir()
    return InferenceSettings(
        api_key=SecretStr(API_KEY),
        bus="memory",
        store="local",
        local_store_root=tmp_path / "objects",
        results_db=f"sqlite:///{tmp_path}/results.db",
        intra_op_threads=1,
        stride=32,
        sources=SourcesSettings(allowed_roots=(str(tmp_path / "allowed"),)),
        model_roots=(str(tmp_path),),  # make_model's files
        _env_file=None,
    )


def _scene(tmp_path: Path, data_dir: Path, scene_id: str) -> Path:
    """A copy of a Boadella scene and its item, both under the allowed root."""
    tif = tmp_path / "allowed" / f"{scene_id}.tif"
    shutil.copyfile(data_dir / BOADELLA, tif)
    item = testing.item_for_raster(
        tif, scene_id, BOADELLA_BANDS, level="L2A", when="2020-06-21T10:30:00Z"
    )
    path = tmp_path / "allowed" / f"{scene_id}.json"
    path.write_text(json.dumps(item))
    return path


def _tile_url(scene_id: str) -> str:
    t = morecantile.tms.get("WebMercatorQuad").tile(*CENTRE, Z)
    return f"/tiles/scenes/{scene_id}/tiles/WebMercatorQuad/{Z}/{t.x}/{t.y}.png"


def _opaque_pixels(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    rgba = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
    return int((rgba[..., 3] == 255).sum())


@pytest.mark.parametrize("target", ["local", "internal-url"])
async def test_a_changed_item_naming_bands_outside_the_allowed_sources_is_refused(
    tmp_path: Path,
    data_dir: Path,
    service: InferenceService,
    client: httpx.AsyncClient,
    make_model: Callable[..., ModelPromoted],
    target: str,
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    kept, changed = _scene(tmp_path, data_dir, "kept"), _scene(tmp_path, data_dir, "changed")
    for item in (kept, changed):
        r = await client.post("/classify/item", json={"item_href": str(item)}, headers=AUTH)
        assert r.status_code == 200, r.text

    # the item changes after its result exists: its bands now name a file outside the allowed
    # roots (a copy of the same scene, so a tile read from it would look right) or an internal
    # address; its own file is gone, so an image could come only from the forbidden source
    secret = tmp_path / "secret" / "private.tif"
    secret.parent.mkdir()
    shutil.copyfile(data_dir / BOADELLA, secret)
    forbidden = str(secret) if target == "local" else "http://127.0.0.1:9/private.tif"
    doc = json.loads(changed.read_text())
    for asset in doc["assets"].values():
        asset["href"] = forbidden
    changed.write_text(json.dumps(doc))
    (tmp_path / "allowed" / "changed.tif").unlink()

    # no API key: tiles are public
    refused = [
        await client.get(_tile_url("changed")),
        await client.get("/tiles/scenes/changed/WebMercatorQuad/tilejson.json"),
        await client.get("/tiles/scenes/changed/WebMercatorQuad/WMTSCapabilities.xml"),
    ]
    for r in refused:
        assert r.status_code == 422, (r.status_code, r.headers.get("content-type"))
        assert r.json()["code"] == "source_not_allowed"
        assert str(secret) not in r.text and "127.0.0.1" not in r.text

    # an item still naming allowed bands keeps its tiles
    assert _opaque_pixels(await client.get(_tile_url("kept"))) > 0.5 * 256 * 256


async def test_a_scene_the_bus_announced_keeps_its_tiles_from_where_ingest_found_it(
    tmp_path: Path,
    data_dir: Path,
    service: InferenceService,
    client: httpx.AsyncClient,
    make_model: Callable[..., ModelPromoted],
) -> None:
    """The bus's scenes come from ingest's configured sources (the stack's STAC API on loopback
    or the cluster's network, which a request may not name): their results say
    ``eostream:sources_checked: false`` and their tiles read the item as the pipeline did. A
    REST request's result says true, and is checked again (above)."""
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    outside = tmp_path / "catalogue"  # not an allowed root: a request naming it is refused
    outside.mkdir()
    shutil.move(_scene(tmp_path, data_dir, "announced"), outside / "announced.json")
    item = outside / "announced.json"
    doc = json.loads(item.read_text())
    tif = outside / "announced.tif"
    shutil.move(tmp_path / "allowed" / "announced.tif", tif)
    for asset in doc["assets"].values():
        asset["href"] = str(tif)
    item.write_text(json.dumps(doc))
    r = await client.post("/classify/item", json={"item_href": str(item)}, headers=AUTH)
    assert r.status_code == 422, r.text  # what a request may not name

    outcome = await asyncio.to_thread(service.pipeline.classify_href, str(item))  # as on_scene
    assert outcome.record.item["properties"]["eostream:sources_checked"] is False
    assert _opaque_pixels(await client.get(_tile_url("announced"))) > 0.5 * 256 * 256
