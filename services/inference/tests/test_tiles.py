"""Tiles of a real result (a Boadella scene classified by a real ONNX model): the land-cover map
in the class colours of its legend, the scene's true colour, TileJSON, WMTS, and bad tiles."""

from __future__ import annotations

import asyncio
import io
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from PIL import Image

from eostream.inference.engine import NODATA
from eostream.inference.service import InferenceService
from eostream.inference.writer import colormap
from eostream.shared.events import ModelPromoted

SCENE = "boadella-2020-06-21"
CENTRE = (2.815, 42.3476)  # the reservoir, inside the scene
Z = 14


def _tile() -> tuple[int, int]:
    t = morecantile.tms.get("WebMercatorQuad").tile(*CENTRE, Z)
    return t.x, t.y


@pytest.fixture
async def classified(
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> Any:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    href = str(boadella_item("2020-06-21"))
    result = await asyncio.to_thread(service.pipeline.classify_href, href)
    assert not result.skipped
    record = service.results.get(SCENE)
    assert record is not None
    return record


def _png(response: httpx.Response) -> np.ndarray[Any, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


async def test_landcover_tile_is_the_cog_in_the_legend_colours(
    client: httpx.AsyncClient, service: InferenceService, classified: Any
) -> None:
    x, y = _tile()
    rgba = _png(await client.get(f"/tiles/results/{SCENE}/tiles/WebMercatorQuad/{Z}/{x}/{y}.png"))
    assert rgba.shape == (256, 256, 4)
    opaque = rgba[..., 3] == 255
    assert opaque.mean() > 0.5  # the scene covers most of this tile
    # every opaque pixel has the colour of a label the COG holds, nothing interpolated
    cog = service.store.uri(f"{classified.prefix}/classification.tif")
    with rasterio.open(cog.removeprefix("file://")) as ds:
        labels = set(np.unique(ds.read(1)).tolist()) - {NODATA}
    model = service.deployment.current
    assert model is not None
    cmap = colormap(model.card.classes)
    allowed = {cmap[v][:3] for v in labels}
    seen = {tuple(int(c) for c in p) for p in rgba[opaque][:, :3]}
    assert seen and seen <= allowed, seen - allowed


async def test_true_colour_tile_of_the_scene(client: httpx.AsyncClient, classified: Any) -> None:
    x, y = _tile()
    rgba = _png(await client.get(f"/tiles/scenes/{SCENE}/tiles/WebMercatorQuad/{Z}/{x}/{y}.png"))
    assert rgba.shape == (256, 256, 4)
    visible = rgba[rgba[..., 3] == 255][:, :3].astype(int)
    assert len(visible) > 0.5 * 256 * 256
    assert visible.std() > 5  # a picture, not a flat fill
    # the reservoir is darker than the land around it, as in reflectance
    assert 5 < visible.mean() < 250


async def test_tilejson_and_wmts(client: httpx.AsyncClient, classified: Any) -> None:
    for kind in ("results", "scenes"):
        tj = (await client.get(f"/tiles/{kind}/{SCENE}/WebMercatorQuad/tilejson.json")).json()
        west, south, east, north = tj["bounds"]
        assert west < CENTRE[0] < east and south < CENTRE[1] < north
        assert f"/tiles/{kind}/{SCENE}/tiles/WebMercatorQuad/" in tj["tiles"][0]
    r = await client.get(f"/tiles/scenes/{SCENE}/WebMercatorQuad/WMTSCapabilities.xml")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    ns = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}
    doc = ET.fromstring(r.content)  # noqa: S314 (our own service's answer)
    template = doc.find(".//w:ResourceURL", ns).attrib["template"]  # type: ignore[union-attr]
    assert "{TileMatrix}/{TileCol}/{TileRow}.png" in template
    x, y = _tile()
    url = template.replace("{TileMatrix}", str(Z)).replace("{TileCol}", str(x))
    tile = await client.get(url.replace("{TileRow}", str(y)))
    assert _png(tile).shape == (256, 256, 4)
    assert doc.findall(".//w:TileMatrixSet/w:TileMatrix", ns)
    # a result's layer says whose map it is: the scene and the model version
    r = await client.get(f"/tiles/results/{SCENE}/WebMercatorQuad/WMTSCapabilities.xml")
    title = ET.fromstring(r.content).find(".//w:Layer/ows:Title", ns)  # noqa: S314
    assert title is not None and title.text is not None
    assert SCENE in title.text and f" v{classified.model_version}" in title.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/tiles/results/{s}/tiles/WebMercatorQuad/14/999999/0.png", 404),  # outside the matrix
        ("/tiles/results/{s}/tiles/WebMercatorQuad/-1/0/0.png", 404),
        ("/tiles/results/{s}/tiles/WebMercatorQuad/99/0/0.png", 404),
        ("/tiles/results/{s}/tiles/WebMercatorQuad/14/0/0.png", 404),  # far from the scene
        ("/tiles/results/{s}/tiles/NoSuchTMS/14/0/0.png", 422),
        ("/tiles/results/{s}/tiles/WebMercatorQuad/a/0/0.png", 422),
        ("/tiles/results/no-such-scene/tiles/WebMercatorQuad/14/0/0.png", 404),
        ("/tiles/scenes/no-such-scene/tiles/WebMercatorQuad/14/0/0.png", 404),
        ("/tiles/results/{s}/tiles/WebMercatorQuad/14/{x}/{y}.png?tilesize=100000", 400),
        # str.isdigit takes both, int() neither: they were 500s
        ("/tiles/results/{s}/tiles/WebMercatorQuad/14/{x}/{y}.png?tilesize=%C2%B2", 422),
        ("/tiles/results/{s}/tiles/WebMercatorQuad/14/{x}/{y}.png?tilesize=" + "9" * 5000, 400),
        ("/tiles/results/%2Fetc%2Fpasswd/tiles/WebMercatorQuad/14/0/0.png", 404),
    ],
)
async def test_bad_tiles_answer_4xx_with_the_error_body(
    client: httpx.AsyncClient, classified: Any, path: str, status: int
) -> None:
    x, y = _tile()
    r = await client.get(path.format(s=SCENE, x=x, y=y))
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "description"}
