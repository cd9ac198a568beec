"""The map page in a real headless browser (Debian's Chromium driven by Playwright): real results
of three Boadella dates, classified by a real ONNX model, served by the real inference app over
HTTP. The page loads with no console error, its tiles render (the land
cover over the true colour, non-blank where the scene is), the legend lists the model's classes,
the date slider runs through the three dates, and each result shows its statistics and links.

Chromium comes from Debian (``deploy/local/tools.sh``, run by ``make tools``/``make test``:
``apt-get install -y chromium``); Playwright's own browser download is never used. Set
``EOSTREAM_VIEWER_SCREENSHOT=docs/img/viewer-boadella.png`` to keep the screenshot, and
``EOSTREAM_VIEWER_MODEL=model.onnx`` to classify with a trained model instead of the tiny one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.writer import UNCERTAIN_NAME
from eostream.shared.events import ModelPromoted
from eostream.shared.ops import OpsServer

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
#: The launch flags of the project's browser tests: no GPU, no network besides the page's own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",  # WebGL on the CPU (MapLibre draws with WebGL)
]
DATES = ("2020-02-02", "2020-06-21", "2021-07-16")
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.fail(
            "no /usr/bin/chromium: run `make tools` (deploy/local/tools.sh installs Debian's "
            "chromium with apt-get: apt-get install -y chromium) to run the browser test",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
def settings(settings: InferenceSettings) -> InferenceSettings:
    """The conftest's settings, classifying about as the demo does (uncertain below 0.3, a
    finer stride than the conftest's 32)."""
    return settings.model_copy(update={"uncertain_below": 0.3, "stride": 8})


@pytest.fixture
def model(make_model: Callable[..., ModelPromoted]) -> ModelPromoted:
    """A tiny real ONNX model, or the ONNX file ``EOSTREAM_VIEWER_MODEL`` names (the README's
    screenshot: a model of ``eostream trainer fit --stac-out DIR``, so the map shows land cover
    worth looking at)."""
    path = os.environ.get("EOSTREAM_VIEWER_MODEL")
    if not path:
        return make_model("1")
    blob = Path(path).read_bytes()
    return ModelPromoted(
        name="eurosat-landcover",
        version="1",
        alias="champion",
        artifact_uri=Path(path).resolve().as_uri(),
        sha256=hashlib.sha256(blob).hexdigest(),
        mlm_item_href="file:///models/eurosat-landcover/1/mlm.json",
        run_id="run-viewer",
    )


async def test_the_map_page_shows_boadella_results_over_true_colour(
    chromium: Path,
    settings: InferenceSettings,
    service: InferenceService,
    model: ModelPromoted,
    boadella_item: Callable[[str], Path],
) -> None:
    from playwright.async_api import async_playwright

    await asyncio.to_thread(service.deployment.deploy, model)
    for date in DATES:
        done = await asyncio.to_thread(service.pipeline.classify_href, str(boadella_item(date)))
        assert not done.skipped
    live = service.deployment.current
    assert live is not None
    classes = list(live.card.classes)
    model_name = live.info.name
    server = OpsServer(create_app(settings, service), "127.0.0.1", 0)
    await server.start()
    errors: list[str] = []
    tiles: list[tuple[int, str]] = []
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on(
                "response",
                lambda r: tiles.append((r.status, r.url)) if "/tiles/" in r.url else None,
            )
            response = await page.goto(server.url + "/", wait_until="load")
            assert response is not None and response.status == 200
            assert "text/html" in response.headers["content-type"]
            await page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            await page.wait_for_function(
                "() => document.querySelectorAll('#legend li').length > 0", timeout=30_000
            )
            await _wait_for_tiles(page)

            # the legend: the model's classes, then "uncertain", each with its colour
            names = await page.eval_on_selector_all(
                "#legend li .name", "els => els.map(e => e.textContent)"
            )
            assert names == [*classes, UNCERTAIN_NAME]

            # the newest of the three dates is shown, with its facts, statistics and links
            assert await page.text_content("#date-label") == DATES[-1]
            assert await page.get_attribute("#date", "max") == str(len(DATES) - 1)
            found = await page.text_content("#found")
            assert found == f"{len(DATES)} results of {len(DATES)} scenes in view", found
            facts = await page.text_content("#result-facts")
            assert facts is not None and f"{model_name} v1" in facts
            assert "%" in facts  # the mean confidence
            rows = await page.eval_on_selector_all("#stats tbody tr", "els => els.length")
            assert rows == len(classes) + 1
            hrefs = await page.eval_on_selector_all(
                "#result-links a", "els => els.map(e => e.href)"
            )
            # the links name the model as well as its version (versions are per model)
            assert any(f"/cog?model_version=1&model_name={model_name}" in h for h in hrefs)
            assert any(f"/item?model_version=1&model_name={model_name}" in h for h in hrefs)
            for href in hrefs:  # the links answer (the COG is the real file)
                status = await page.evaluate("u => fetch(u).then(r => r.status)", href)
                assert status == 200, href

            # tiles drew: non-blank, varied pixels over the scene, the map's background elsewhere
            shot = await page.screenshot()
            pixels = _map_pixels(shot)
            centre = pixels[pixels.shape[0] // 3 : 2 * pixels.shape[0] // 3,
                            pixels.shape[1] // 3 : 2 * pixels.shape[1] // 3]  # fmt: skip
            background = np.array([0x2B, 0x30, 0x38])
            drawn = np.abs(centre.astype(int) - background).sum(axis=2) > 30
            assert drawn.mean() > 0.9, "the scene's tiles cover the middle of the map"
            assert len(np.unique(centre.reshape(-1, 3), axis=0)) > 20  # a map, not a fill
            if target := os.environ.get("EOSTREAM_VIEWER_SCREENSHOT"):
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                Path(target).write_bytes(shot)

            # the date slider goes back in time: another result, another true colour
            await page.fill("#date", "0")  # range inputs take fill() and fire "input"
            await page.wait_for_function(
                f"() => document.querySelector('#date-label').textContent === '{DATES[0]}'"
            )
            await _wait_for_tiles(page)
            earlier = _map_pixels(await page.screenshot())
            assert np.abs(earlier.astype(int) - pixels.astype(int)).mean() > 1

            # a what-if result of the newest date written later (an OGC job naming another
            # version) is listed, but the page opens on the served model's map of that date
            what_if = dataclasses.replace(
                done.record,
                id=done.record.id + "-what-if",
                model_version="0",
                created=datetime.now(UTC) + timedelta(hours=1),
            )
            await asyncio.to_thread(service.results.put, what_if)
            await page.reload(wait_until="load")
            await page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            await page.wait_for_function(
                f"() => document.querySelectorAll('#results li').length === {len(DATES) + 1}"
            )
            await page.wait_for_function(
                f"() => document.querySelector('#date-label').textContent === '{DATES[-1]}'"
            )
            facts = await page.text_content("#result-facts")
            assert facts is not None and f"{model_name} v1" in facts, facts
            await browser.close()
    finally:
        await server.stop()
    assert tiles and all(status == 200 for status, _ in tiles), [t for t in tiles if t[0] != 200]
    assert any("/tiles/scenes/" in u for _, u in tiles)
    assert any("/tiles/results/" in u for _, u in tiles)
    assert errors == []


async def _wait_for_tiles(page: Any) -> None:
    """Until MapLibre has loaded and drawn every tile of both layers (its "idle" event)."""
    await page.wait_for_function(
        "() => document.body.dataset.tiles === 'loaded'", timeout=60_000, polling=100
    )


def _map_pixels(png: bytes) -> np.ndarray[Any, Any]:
    """The map's part of a screenshot (left of the 340 px panel), RGB."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return image[:, : image.shape[1] - 340]
