"""``eostream.client.InferenceClient`` against a real inference service served by uvicorn on
127.0.0.1: a chosen model run on a real scene as an OGC job, then the result found, described
and downloaded through the client; failures raise one ApiError with the server's error body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from eostream.client import ApiError, InferenceClient
from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.shared.events import ModelPromoted
from eostream.shared.ops import OpsServer

from .conftest import API_KEY

SCENE = "boadella-2020-06-21"
BBOX = (2.79, 42.33, 2.84, 42.37)  # the Boadella crop (WGS84)


@pytest.fixture
async def served(
    settings: InferenceSettings,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
) -> AsyncIterator[str]:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    await asyncio.to_thread(service.deployment.deploy, make_model("2"))
    server = OpsServer(create_app(settings, service), "127.0.0.1", 0)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


def run_an_old_version_and_read_its_map(url: str, scene_href: str) -> None:
    with InferenceClient(url, api_key=API_KEY) as api:
        assert api.models().deployed is not None
        assert api.models().deployed.version == "2"  # type: ignore[union-attr]
        assert [p.id for p in api.processes().processes] == ["classify-scene"]

        job = api.execute({"scene": scene_href, "model": "models:/eurosat/1"})
        assert job.model == {"name": "eurosat", "version": "1"}
        done = api.wait(job.job_id, timeout=300, poll=0.1)
        assert done.status == "successful"
        made = api.job_result(job.job_id)
        assert (made.scene_id, made.model_version) == (SCENE, "1")

        page = api.search_results(bbox=BBOX, datetime="2020-06-01/2020-06-30")
        assert [(r.scene_id, r.model_version) for r in page.results] == [(SCENE, "1")]
        assert api.search_results(bbox=(10, 10, 11, 11)).total == 0  # elsewhere: nothing
        stats = api.statistics(SCENE, model_version="1")
        assert sum(c.pixels for c in stats.classes.values()) <= stats.valid_pixels
        shares = {name: c.share for name, c in stats.classes.items() if c.pixels}
        assert shares == pytest.approx({k: v for k, v in made.class_shares.items() if v})
        assert api.quicklook(SCENE, model_version="1").startswith(b"\x89PNG")
        assert api.cog(SCENE)[:4] in (b"II*\x00", b"MM\x00*")  # a GeoTIFF
        items = api.stac_search(bbox=BBOX, filter="eostream:model_version = '1'")
        assert [i["id"] for i in items] == [made.id]
        assert (
            api.stac_search(
                filter={"op": "=", "args": [{"property": "eostream:model_version"}, "2"]}
            )
            == []
        )

        with pytest.raises(ApiError) as missing:
            api.statistics("no-such-scene")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        assert "no-such-scene" in missing.value.description

    with InferenceClient(url) as anonymous, pytest.raises(ApiError) as refused:
        anonymous.execute({"scene": scene_href})
    assert refused.value.status == 401
    with InferenceClient("http://127.0.0.1:9") as nowhere, pytest.raises(ApiError) as down:
        nowhere.models()
    assert (down.value.status, down.value.code) == (0, "unreachable")


async def test_the_client_runs_a_chosen_model_and_finds_describes_and_downloads_its_map(
    served: str, boadella_item: Callable[[str], Path]
) -> None:
    # the client is synchronous: it runs in a thread while the server serves on this loop
    await asyncio.to_thread(
        run_an_old_version_and_read_its_map, served, str(boadella_item("2020-06-21"))
    )
