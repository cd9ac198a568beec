"""A result COG read over HTTP through its STAC asset href (issue #18): Range requests (206,
416, HEAD) on the real inference app served by uvicorn, ``gdalinfo /vsicurl/<href>`` (Debian's
GDAL, as QGIS would read it) showing the category names and colour table, and rasterio reading
the same pixels remotely as from the object store."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio

from eostream.inference import writer
from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.shared.events import ModelPromoted
from eostream.shared.ops import OpsServer


def gdalinfo(target: str) -> str:
    binary = shutil.which("gdalinfo")
    if binary is None:
        pytest.fail("gdalinfo is missing: run `make tools` (Debian's gdal-bin)")
    done = subprocess.run(
        [binary, target],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GDAL_HTTP_MAX_RETRY": "0"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_result_cog_over_http(
    settings: InferenceSettings,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    outcome = await asyncio.to_thread(
        service.pipeline.classify_href, str(boadella_item("2020-06-21"))
    )
    record = outcome.record
    stored = service.pipeline.store.get_bytes(f"{record.prefix}/classification.tif")
    server = OpsServer(create_app(settings, service), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            item = (
                await client.get(
                    f"{server.url}/stac/collections/{settings.collection_id}/items/{record.id}"
                )
            ).json()
            asset = item["assets"]["classification"]
            href = asset["href"]
            assert href.startswith(f"{server.url}/results/")
            assert asset["alternate"]["storage"]["href"].startswith("file://")
            for key in ("quicklook", "statistics"):
                got = await client.get(item["assets"][key]["href"])
                assert got.status_code == 200 and got.content

            head = await client.head(href)
            assert head.status_code == 200 and head.headers["accept-ranges"] == "bytes"
            assert int(head.headers["content-length"]) == len(stored)
            part = await client.get(href, headers={"Range": "bytes=0-99"})
            assert part.status_code == 206 and part.content == stored[:100]
            assert part.headers["content-range"] == f"bytes 0-99/{len(stored)}"
            tail = await client.get(href, headers={"Range": "bytes=-10"})
            assert tail.status_code == 206 and tail.content == stored[-10:]
            whole = await client.get(href)
            assert whole.status_code == 200 and whole.content == stored
            past = await client.get(href, headers={"Range": f"bytes={len(stored)}-"})
            assert past.status_code == 416 and set(past.json()) == {"code", "description"}
            assert past.headers["content-range"] == f"bytes */{len(stored)}"
            cog = await client.get(
                f"{server.url}/results/{record.scene_id}/cog",
                params={"model_version": "1"},
                headers={"Range": "bytes=100-199"},
            )
            assert cog.status_code == 206 and cog.content == stored[100:200]
            missing = await client.get(href.rsplit("/", 1)[0] + "/secrets.txt")
            assert missing.status_code == 404

        report = await asyncio.to_thread(gdalinfo, f"/vsicurl/{href}")
        assert "Categories:" in report, report
        for entry in asset["classification:classes"]:  # the classes and "uncertain" (254)
            assert f"{entry['value']}: {entry['name']}" in report, report
        assert f"254: {writer.UNCERTAIN_NAME}" in report
        assert "Color Table (RGB with 256 entries)" in report
        r, g, b = writer.PALETTE[1]
        assert f"1: {r},{g},{b},255" in report  # Forest's colour

        # rasterio (its own GDAL) in another process: GDAL holds this one's GIL while it reads
        remote = tmp_path / "remote.npy"
        script = (
            "import sys, numpy, rasterio\n"
            "with rasterio.open('/vsicurl/' + sys.argv[1]) as src:\n"
            "    assert src.colormap(1)[1] == tuple(int(v) for v in sys.argv[3].split(','))\n"
            "    numpy.save(sys.argv[2], src.read(1))\n"
        )
        forest = ",".join(str(v) for v in (*writer.PALETTE[1], 255))
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script, href, str(remote), forest],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with rasterio.open(asset["alternate"]["storage"]["href"]) as local:
            assert np.array_equal(np.load(remote), local.read(1))
    finally:
        await server.stop()
