"""Publishing results into a STAC API (``catalog.py``) without the stack: a STAC API that does
not answer never fails a scene (the index keeps the result, the error is logged), and the
published collection's extents and summaries grow with its items."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from eostream.inference.catalog import PublishingResults, collection_document, published_item
from eostream.inference.settings import CatalogSettings, InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.events import ModelPromoted

from .conftest import API_KEY


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_an_unreachable_stac_api_does_not_fail_the_scene(
    tmp_path: Path,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = InferenceSettings(
        api_key=SecretStr(API_KEY),
        bus="memory",
        store="local",
        local_store_root=tmp_path / "objects",
        results_db=f"sqlite:///{tmp_path}/results.db",
        intra_op_threads=1,
        public_url="http://maps.example.org",
        catalog=CatalogSettings(
            stac_api_url=f"http://127.0.0.1:{_closed_port()}", timeout_seconds=2
        ),
        model_roots=(str(tmp_path),),  # make_model's files
        _env_file=None,
    )
    service = build_service(settings, consume=False)
    assert isinstance(service.results, PublishingResults)
    await service.start()
    try:
        await asyncio.to_thread(service.deployment.deploy, make_model("1"))
        with caplog.at_level(logging.ERROR, logger="eostream.inference.catalog"):
            outcome = await asyncio.to_thread(
                service.pipeline.classify_href, str(boadella_item("2020-06-21"))
            )
        assert not outcome.skipped
        assert service.results.get(outcome.record.scene_id) is not None  # indexed all the same
        assert any("not published" in r.getMessage() for r in caplog.records)

        # with a public URL, the stored item names the API's collection, and links to it
        stored, own = outcome.record.item, settings.collection_id
        assert stored["collection"] == own
        assert [link["href"] for link in stored["links"] if link["rel"] == "collection"] == [
            f"http://maps.example.org/stac/collections/{own}"
        ]
        item = published_item(outcome.record, "eostream-results", "http://maps.example.org")
        assert item["collection"] == "eostream-results"
        assert item["assets"]["classification"]["href"].startswith(
            "http://maps.example.org/results/boadella-2020-06-21/files/eurosat/1/classification.tif"
        )
        assert not {link["rel"] for link in item["links"]} & {"self", "root", "parent"}
        first = collection_document("eostream-results", item, None)
        later = dict(item, bbox=[10.0, 40.0, 11.0, 41.0])
        later["properties"] = {
            **item["properties"],
            "datetime": "2021-01-01T00:00:00Z",
            "eostream:model_version": "2",
        }
        grown = collection_document("eostream-results", later, first)
        west, south, east, north = grown["extent"]["spatial"]["bbox"][0]
        assert (west, south, east, north) == (item["bbox"][0], 40.0, 11.0, item["bbox"][3])
        assert grown["extent"]["temporal"]["interval"][0][1] == "2021-01-01T00:00:00Z"
        assert grown["summaries"]["eostream:model_version"] == ["1", "2"]
        # a result across the antimeridian (west > east): the extent spans every longitude
        fiji = dict(later, bbox=[179.0, -17.0, -179.0, -16.0])
        across = collection_document("eostream-results", fiji, grown)["extent"]["spatial"]
        assert across["bbox"][0] == [-180.0, -17.0, 180.0, item["bbox"][3]]
        assert grown["extent"]["spatial"]["bbox"][0][0] == item["bbox"][0]  # left as it was
    finally:
        await service.stop()
