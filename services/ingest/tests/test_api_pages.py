"""A STAC API page whose features are not all objects: the objects are announced, each other
feature is dead-lettered once with what it was, and a page without a list of features is the
API's failure (retried), not an item's. The API is a small HTTP server on 127.0.0.1 that answers
pystac-client as a broken upstream would."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from eostream.ingest.errors import SourceUnavailable
from eostream.ingest.service import from_settings, running
from eostream.ingest.settings import IngestSettings, StacApiSource
from eostream.ingest.sources import page_items
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus

from .conftest import JsonDict
from .helpers import drain

SEARCH = "https://api.stacspec.org/v1.0.0/item-search"
CORE = "https://api.stacspec.org/v1.0.0/core"


@pytest.fixture
def broken_api(earth_search_v1: list[JsonDict]) -> Iterator[str]:
    """An API whose one search page holds a real Earth Search item, a number and a text."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, body: JsonDict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            root = f"http://{self.headers['Host']}"
            if self.path.split("?")[0] in ("", "/"):
                self._json(
                    {
                        "type": "Catalog",
                        "id": "broken",
                        "description": "a broken STAC API",
                        "stac_version": "1.0.0",
                        "conformsTo": [CORE, SEARCH],
                        "links": [
                            {"rel": "self", "href": f"{root}/"},
                            {"rel": "root", "href": f"{root}/"},
                            {"rel": "search", "href": f"{root}/search", "method": "GET"},
                        ],
                    }
                )
            else:
                features = [earth_search_v1[0], 1, "x"]
                self._json({"type": "FeatureCollection", "features": features, "links": []})

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_features_that_are_not_objects_are_dead_lettered_once(
    tmp_path: Any, broken_api: str
) -> None:
    settings = IngestSettings(
        bus="memory",
        sources=(StacApiSource(name="broken", url=broken_api, timeout_seconds=10),),
        sqlite_path=tmp_path / "state.sqlite",
    )
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        first = await watcher.poll(watcher.sources[0])
        second = await watcher.poll(watcher.sources[0])

    assert (first.published, first.rejected) == (1, 2), first.rejections
    assert (second.published, second.rejected) == (0, 0)  # no new dead letter every poll
    assert len(await drain(bus, topics.SCENES_DISCOVERED, "t")) == 1
    reasons = sorted(d.reason for d in await bus.read_dead_letters(limit=10))
    assert len(reasons) == 2
    assert "feature 1 of a page of STAC API" in reasons[0] and reasons[0].endswith("object: 1")
    assert reasons[1].endswith('object: "x"')


@pytest.mark.parametrize("page", [{"features": {"id": "a"}}, {"features": None}, ["not", "a page"]])
def test_a_page_without_a_features_list_is_the_apis_failure(page: Any) -> None:
    with pytest.raises(SourceUnavailable, match="without a features list"):
        page_items(page, "broken", "http://127.0.0.1:1/")
    assert page_items({}, "broken", "http://127.0.0.1:1/") == []  # no features: an empty page
