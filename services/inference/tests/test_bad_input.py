"""Broken rasters and items get a clear 4xx over REST and a dead-letter entry with the reason
from the consumer; the service stays up."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio

from eostream.inference.service import InferenceService
from eostream.inference.wiring import build_service
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import ModelPromoted, SceneDiscovered

from .conftest import AUTH, BOADELLA_BANDS


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real local HTTP server over a folder (for 404s over HTTP)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def _item_with(
    boadella: Path, tmp_path: Path, name: str, href: str, bands: list[str] | None = None
) -> Path:
    item = json.loads(boadella.read_text())
    item["id"] = name
    item["assets"]["data"]["href"] = href
    if bands is not None:
        item["assets"]["data"]["eo:bands"] = [{"name": b} for b in bands]
    out = tmp_path / f"{name}.json"
    out.write_text(json.dumps(item))
    return out


@pytest.fixture
def broken(
    tmp_path: Path, boadella_item: Callable[[str], Path], http_dir: tuple[str, Path]
) -> dict[str, tuple[Path | str, int, str]]:
    """name -> (item href, expected HTTP status, words the reason must contain)."""
    good = boadella_item("2020-06-21")
    tif = Path(json.loads(good.read_text())["assets"]["data"]["href"])
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(
        nocrs, "w", driver="GTiff", width=80, height=80, count=12, dtype="int16"
    ) as ds:
        ds.write(np.full((12, 80, 80), 500, np.int16))
    not_json = tmp_path / "not-json.json"
    not_json.write_text("{ this is not json")
    base, _root = http_dir
    return {
        "corrupt": (
            _item_with(good, tmp_path, "corrupt", str(corrupt)),
            400,
            "not a readable raster",
        ),
        "truncated": (_item_with(good, tmp_path, "truncated", str(truncated)), 400, "truncated"),
        "no-crs": (_item_with(good, tmp_path, "no-crs", str(nocrs)), 400, "no CRS"),
        "missing-asset": (
            _item_with(good, tmp_path, "missing", str(tmp_path / "gone.tif")),
            422,
            "cannot be found",
        ),
        "asset-404-http": (
            _item_with(good, tmp_path, "http404", f"{base}/gone.tif"),
            422,
            "cannot be found",
        ),
        "wrong-bands": (
            _item_with(
                good,
                tmp_path,
                "wrong-bands",
                str(tif),
                [
                    "B01",
                    "B05",
                    "B06",
                    "B07",
                    "B07",
                    "B06",
                    "B07",
                    "B08",
                    "B8A",
                    "B09",
                    "B11",
                    "B12",
                ],
            ),
            422,
            "B02",
        ),
        "item-404": (tmp_path / "no-such-item.json", 422, "no such file"),
        "item-404-http": (f"{base}/no-such-item.json", 422, "404"),
        "not-json": (not_json, 400, "not JSON"),
    }


async def test_rest_answers_4xx_with_a_reason(
    service: InferenceService,
    client: httpx.AsyncClient,
    broken: dict[str, tuple[Path | str, int, str]],
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    for name, (href, status, words) in broken.items():
        r = await client.post("/classify/item", json={"item_href": str(href)}, headers=AUTH)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        body = r.json()
        assert set(body) == {"code", "description"} and words in body["description"], (
            f"{name}: {body}"
        )
    ok = await client.post(
        "/classify/item", json={"item_href": str(boadella_item("2020-06-21"))}, headers=AUTH
    )
    assert ok.status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_consumer_dead_letters_with_the_reason(
    service: InferenceService,
    bus: InMemoryBus,
    broken: dict[str, tuple[Path | str, int, str]],
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    for name, (href, _status, _words) in broken.items():
        await bus.publish(
            topics.SCENES_DISCOVERED,
            SceneDiscovered(
                item_id=name,
                item_href=str(href),
                datetime=datetime(2020, 6, 21, tzinfo=UTC),
                processing_level="L2A",
                bands=tuple(BOADELLA_BANDS),
                source_name="test",
            ),
        )
    await bus.publish(
        topics.SCENES_DISCOVERED,
        SceneDiscovered(
            item_id="boadella-2020-06-21",
            item_href=str(boadella_item("2020-06-21")),
            datetime=datetime(2020, 6, 21, tzinfo=UTC),
            processing_level="L2A",
            bands=("B04",),
            source_name="test",
        ),
    )
    for _ in range(600):
        if bus.size(topics.SCENES_CLASSIFIED):
            break
        await asyncio.sleep(0.05)
    assert bus.size(topics.SCENES_CLASSIFIED) == 1, "the service kept going after bad input"
    dead = await bus.read_dead_letters(limit=50)
    reasons = {d.original_key: d.reason for d in dead}
    assert set(reasons) == set(broken)
    for name, (_href, _status, words) in broken.items():
        assert words in reasons[name], f"{name}: {reasons[name]}"


async def test_level_refusal_is_a_clear_422(
    settings: object,
    tmp_path: Path,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    from eostream.inference.api.app import create_app

    strict = settings.model_copy(update={"level_mismatch": "refuse"})  # type: ignore[attr-defined]
    svc = build_service(strict, consume=False)
    await svc.start()
    try:
        await asyncio.to_thread(svc.deployment.deploy, make_model("1"))
        transport = httpx.ASGITransport(app=create_app(strict, svc))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post(
                "/classify/item", json={"item_href": str(boadella_item("2020-06-21"))}, headers=AUTH
            )
        assert r.status_code == 422 and r.json()["code"] == "level_mismatch"
    finally:
        await svc.stop()


async def test_uploads(
    service: InferenceService,
    client: httpx.AsyncClient,
    tmp_path: Path,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    tif = Path(json.loads(boadella_item("2020-06-21").read_text())["assets"]["data"]["href"])
    content = tif.read_bytes()
    files = {"file": ("boadella.tif", content, "image/tiff")}
    bands = ",".join(BOADELLA_BANDS)
    r = await client.post("/classify/upload", files=files, data={"bands": bands}, headers=AUTH)
    assert r.status_code == 200, r.text
    scene = r.json()["scene_id"]
    stats = (await client.get(f"/results/{scene}/statistics")).json()
    assert stats["valid_pixels"] == 380 * 377

    cases = [
        ({"file": ("x.tif", content, "image/tiff")}, {}, 401, None),
        ({"file": ("x.tif", content, "image/tiff")}, {"bands": "B04,B03"}, 422, AUTH),
        ({"file": ("x.tif", content, "image/tiff")}, {}, 422, AUTH),  # no band names anywhere
        ({"file": ("x.tif", b"garbage" * 100, "image/tiff")}, {"bands": bands}, 400, AUTH),
        ({"file": ("x.tif", b"", "image/tiff")}, {"bands": bands}, 400, AUTH),
        ({"file": ("x.tif", b"\0" * 5_000_001, "image/tiff")}, {"bands": bands}, 413, AUTH),
    ]
    for files_, data, status, headers in cases:
        r = await client.post("/classify/upload", files=files_, data=data, headers=headers)
        assert r.status_code == status, (status, r.text)
        assert "description" in r.json()
    wrong = await client.post(
        "/classify/upload", files=files, data={"bands": bands}, headers={"X-API-Key": "wrong"}
    )
    assert wrong.status_code == 401
