"""Hostile input over REST (issue #20): requests cost nothing until allowed, only allowed sources
are read, and no answer leaks a server path or whether a file exists or a port is open."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio

from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings, SourcesSettings
from eostream.inference.wiring import build_service
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import ModelPromoted, SceneDiscovered
from eostream.shared.sources_policy import GENERIC
from eostream.shared.testing import StreamedBody

from .conftest import AUTH, BOADELLA_BANDS

GB = 1 << 30
MIB = 1 << 20  # the streamed bodies' chunks
REFUSED = {"code": "source_not_allowed", "description": GENERIC}
RAW_VRT_OF_ETC_FILE = """<VRTDataset rasterXSize="16" rasterYSize="4">
  <SRS>EPSG:32631</SRS>
  <GeoTransform>500000, 10, 0, 4600000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativetoVRT="0">/etc/passwd</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>16</LineOffset>
  </VRTRasterBand>
</VRTDataset>
"""


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp folder uploads are spooled to (Starlette's and ours), empty at the start."""
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _multipart(boundary: str, size: int) -> tuple[bytes, bytes]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.tif"\r\n'
        "Content-Type: image/tiff\r\n\r\n"
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode()


async def test_unauthenticated_gigabyte_upload_is_refused_before_reading(
    client: httpx.AsyncClient, spool: Path
) -> None:
    body = StreamedBody(GB, chunk=MIB)
    r = await client.post(
        "/classify/upload",
        content=body,
        headers={"Content-Length": str(GB), "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert body.sent == 0, "the body was read before the key was checked"
    assert list(spool.iterdir()) == []
    # the same for the OGC process endpoint
    r = await client.post(
        "/processes/classify-scene/execution", content=StreamedBody(GB, chunk=MIB)
    )
    assert r.status_code == 401


async def test_oversize_authenticated_upload_is_cut_off_while_streaming(
    client: httpx.AsyncClient, settings: InferenceSettings, spool: Path
) -> None:
    declared = await client.post(
        "/classify/upload",
        content=StreamedBody(GB, chunk=MIB),
        headers={**AUTH, "Content-Length": str(GB), "Content-Type": "multipart/form-data"},
    )
    assert declared.status_code == 413 and declared.json()["code"] == "too_large"

    head, tail = _multipart("b", 0)
    payload = StreamedBody(3 * settings.max_upload_bytes, chunk=MIB)

    async def stream() -> AsyncIterator[bytes]:  # no Content-Length: chunked, size unknown
        yield head
        async for chunk in payload:
            yield chunk
        yield tail

    r = await client.post(
        "/classify/upload",
        content=stream(),
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
    assert payload.sent < 2 * settings.max_upload_bytes, "the whole body was read"

    lying = StreamedBody(settings.max_upload_bytes, chunk=MIB)  # says 1000 bytes, sends 5 MB

    async def lie() -> AsyncIterator[bytes]:
        yield head
        async for chunk in lying:
            yield chunk

    r = await client.post(
        "/classify/upload",
        content=lie(),
        headers={
            **AUTH,
            "Content-Length": "1000",
            "Content-Type": "multipart/form-data; boundary=b",
        },
    )
    assert r.status_code == 413
    assert lying.sent <= 2 << 20


async def test_a_vrt_upload_is_refused(
    service: InferenceService,
    client: httpx.AsyncClient,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    vrt = tmp_path / "passwd.tif"
    vrt.write_text(RAW_VRT_OF_ETC_FILE)
    with rasterio.open(vrt) as ds:  # what GDAL would do with it unchecked
        assert ds.driver == "VRT" and bytes(ds.read(1).ravel()[:5]) == b"root:"
    files = {"file": ("scene.tif", vrt.read_bytes(), "image/tiff")}
    r = await client.post("/classify/upload", files=files, data={"bands": "B04"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["code"] == "bad_input", r.text
    assert "VRT" in r.json()["description"] and "eostream-upload" not in r.text

    # named by an item inside the allowed roots, the pipeline refuses to open it too
    item = json.loads(boadella_item("2020-06-21").read_text())
    item["assets"]["data"]["href"] = str(vrt)
    named = tmp_path / "vrt-item.json"
    named.write_text(json.dumps(item))
    r = await client.post("/classify/item", json={"item_href": str(named)}, headers=AUTH)
    assert r.status_code == 400 and "not a readable raster" in r.json()["description"], r.text


async def _client_with(
    settings: InferenceSettings, sources: SourcesSettings, model: ModelPromoted
) -> AsyncIterator[httpx.AsyncClient]:
    cfg = settings.model_copy(update={"sources": sources})
    svc = build_service(cfg, consume=False)
    await svc.start()
    try:
        await asyncio.to_thread(svc.deployment.deploy, model)
        transport = httpx.ASGITransport(app=create_app(cfg, svc))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c
    finally:
        await svc.stop()


@pytest.fixture
async def default_client(
    settings: InferenceSettings, make_model: Callable[..., ModelPromoted]
) -> AsyncIterator[httpx.AsyncClient]:
    """A service with the default allowed sources (the conftest's allows 127.0.0.1)."""
    async for c in _client_with(settings, SourcesSettings(), make_model("1")):
        yield c


@pytest.fixture
async def loopback_client(
    settings: InferenceSettings, make_model: Callable[..., ModelPromoted]
) -> AsyncIterator[httpx.AsyncClient]:
    """A service that allows 127.0.0.1 (a local STAC API) but nothing else private."""
    sources = SourcesSettings(allowed_networks=("127.0.0.1/32",))
    async for c in _client_with(settings, sources, make_model("1")):
        yield c


async def test_named_sources_outside_the_allow_list_get_one_answer(
    default_client: httpx.AsyncClient, boadella_item: Callable[[str], Path], tmp_path: Path
) -> None:
    client = default_client
    with socket_listening() as open_port:
        hrefs = [
            "/etc/passwd",  # exists
            "/etc/no-such-file.json",  # does not
            "file:///etc/passwd",
            "file:///etc/no-such-file.json",
            "/vsicurl/http://169.254.169.254/latest/meta-data/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/item.json",
            f"http://127.0.0.1:{open_port}/item.json",  # a port that is open
            "http://127.0.0.1:1/item.json",  # one that is not
            "http://[::1]:1/item.json",
            "s3://some-other-bucket/item.json",
            "gopher://127.0.0.1:70/",
            "http://[bad/x",  # not a URL: urlparse raised, a 500
        ]
        for href in hrefs:
            r = await client.post("/classify/item", json={"item_href": href}, headers=AUTH)
            assert (r.status_code, r.json()) == (422, REFUSED), (href, r.text)
    # an allowed item that names a forbidden asset: the same answer, nothing opened
    item = json.loads(boadella_item("2020-06-21").read_text())
    # as many steps up as the item lies deep, whatever pytest's temporary root (under xdist it
    # is one folder deeper): the relative href reaches /etc/passwd itself
    climb = "../" * len(tmp_path.parts) + "etc/passwd"
    for asset in ("/etc/passwd", "http://169.254.169.254/x.tif", climb):
        item["assets"]["data"]["href"] = asset
        named = tmp_path / "named.json"
        named.write_text(json.dumps(item))
        r = await client.post("/classify/item", json={"item_href": str(named)}, headers=AUTH)
        assert (r.status_code, r.json()) == (422, REFUSED), (asset, r.text)
    r = await client.post(
        "/processes/classify-scene/execution",
        json={"inputs": {"item_href": "/etc/passwd"}},
        headers=AUTH,
    )
    assert (r.status_code, r.json()) == (422, REFUSED)


async def test_redirects_to_another_host_are_refused(
    loopback_client: httpx.AsyncClient,
    redirector: str,
    boadella_item: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    for path in ("/to-other-host", "/to-nowhere"):
        r = await loopback_client.post(
            "/classify/item", json={"item_href": redirector + path}, headers=AUTH
        )
        assert (r.status_code, r.json()) == (422, REFUSED), (path, r.text)
    # an allowed item whose raster asset redirects to another host: GDAL would follow it
    item = json.loads(boadella_item("2020-06-21").read_text())
    item["assets"]["data"]["href"] = redirector + "/band.tif"
    named = tmp_path / "redirecting-asset.json"
    named.write_text(json.dumps(item))
    r = await loopback_client.post("/classify/item", json={"item_href": str(named)}, headers=AUTH)
    assert (r.status_code, r.json()) == (422, REFUSED), r.text
    # the allowed loopback host itself is read (a 404 is told: the source is allowed)
    r = await loopback_client.post(
        "/classify/item", json={"item_href": redirector + "/missing.json"}, headers=AUTH
    )
    assert r.status_code == 422 and r.json()["code"] == "referenced_not_found"


async def test_truncated_and_huge_uploads_get_clear_errors(
    service: InferenceService,
    client: httpx.AsyncClient,
    make_model: Callable[..., ModelPromoted],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    tif = data_dir / "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2/Boadella_2020-06-21.tif"
    bands = ",".join(BOADELLA_BANDS)
    for cut in (600, tif.stat().st_size // 2):
        files = {"file": ("cut.tif", tif.read_bytes()[:cut], "image/tiff")}
        r = await client.post("/classify/upload", files=files, data={"bands": bands}, headers=AUTH)
        text = r.json()["description"]
        assert r.status_code == 400 and "truncated" in text and "no CRS" not in text, (cut, text)
        assert "eostream-upload" not in r.text and tempfile.gettempdir() not in r.text

    # a tiny deflated file that declares 6000 x 6000 px: refused from its header
    bomb = tmp_path / "bomb.tif"
    profile = {"driver": "GTiff", "width": 6000, "height": 6000, "count": 1, "dtype": "uint16"}
    with rasterio.open(
        bomb,
        "w",
        **profile,
        crs="EPSG:32631",
        transform=rasterio.transform.from_origin(500000, 4600000, 10, 10),
        tiled=True,
        compress="deflate",
    ) as ds:
        ds.write(np.zeros((1, 6000, 6000), np.uint16))
    assert bomb.stat().st_size < 300_000
    files = {"file": ("bomb.tif", bomb.read_bytes(), "image/tiff")}
    r = await client.post("/classify/upload", files=files, data={"bands": "B04"}, headers=AUTH)
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
    assert "6000x6000" in r.json()["description"]


class socket_listening:
    """A port with a listener on 127.0.0.1 (to show an open port answers like a closed one)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def test_the_pixel_budget_refuses_a_scene_before_classifying_it(
    settings: InferenceSettings,
    bus: InMemoryBus,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    """Over INFERENCE_MAX_SCENE_PIXELS (checked from the rasters' headers, before any window is
    read): 413 over REST, a dead letter with the reason from the consumer; nothing written."""
    cfg = settings.model_copy(update={"max_scene_pixels": 10_000})
    svc = build_service(cfg, bus=bus)
    await svc.start()
    try:
        await asyncio.to_thread(svc.deployment.deploy, make_model("1"))
        transport = httpx.ASGITransport(app=create_app(cfg, svc))
        href = str(boadella_item("2020-06-21"))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/classify/item", json={"item_href": href}, headers=AUTH)
        assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
        assert "more than the 10000 allowed" in r.json()["description"]
        await bus.publish(
            topics.SCENES_DISCOVERED,
            SceneDiscovered(
                item_id="boadella-2020-06-21",
                item_href=href,
                datetime=datetime(2020, 6, 21, tzinfo=UTC),
                processing_level="L2A",
                bands=tuple(BOADELLA_BANDS),
                source_name="test",
            ),
        )
        for _ in range(400):
            dead = await bus.read_dead_letters(limit=5)
            if dead:
                break
            await asyncio.sleep(0.05)
        assert [d.original_key for d in dead] == ["boadella-2020-06-21"]
        assert "more than the 10000 allowed" in dead[0].reason, dead[0].reason
        assert bus.size(topics.SCENES_CLASSIFIED) == 0
        written = [p for p in Path(cfg.local_store_root).rglob("*") if p.is_file()]
        assert written == [], written
    finally:
        await svc.stop()


async def test_nested_json_far_dates_and_odd_scene_fields_get_4xx_not_500(
    service: InferenceService,
    client: httpx.AsyncClient,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
    tmp_path: Path,
) -> None:
    """Each of these was a 500: an item file of 200,000 nested brackets (RecursionError), the
    change of the day 9999-12-31 (its end computed as the next day's start: OverflowError, no
    key needed), and a public search sorted by a property a provider wrote as text in one
    scene and a number in another (str < int)."""
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    r = await client.post("/classify/item", json={"item_href": str(deep)}, headers=AUTH)
    assert (r.status_code, r.json()["code"]) == (400, "bad_input"), r.text
    assert "nested too deeply" in r.json()["description"]
    for query in ("a=9999-12-31&b=2020-06-21", "a=2020-06-21&b=9999-12-31"):
        r = await client.get(f"/results/change?{query}")
        assert r.status_code == 404 and r.json()["code"], (query, r.text)
    # eo:cloud_cover as text: the map is made, its result carries no cloud cover
    for date, cover in (("2020-06-21", "7"), ("2021-07-16", 5)):
        item = json.loads(boadella_item(date).read_text())
        item["properties"]["eo:cloud_cover"] = cover
        href = tmp_path / f"cover-{date}.json"
        href.write_text(json.dumps(item))
        r = await client.post("/classify/item", json={"item_href": str(href)}, headers=AUTH)
        assert r.status_code == 200, r.text
    found = await client.get("/stac/search", params={"sortby": "-eo:cloud_cover", "limit": 10})
    assert found.status_code == 200, found.text
    covers = [f["properties"].get("eo:cloud_cover") for f in found.json()["features"]]
    assert covers == [5, None]


def test_sorting_a_property_of_numbers_and_text_orders_each_among_its_own() -> None:
    from eostream.inference.api.search import sort_key

    values: list[str | int | float] = [3, "b", 1.5, "a", 2, 2**53 + 1, 2**53]
    assert sorted(values, key=sort_key) == [1.5, 2, 3, 2**53, 2**53 + 1, "a", "b"]
