"""schemathesis over the whole inference API (issue #20), with and without the API key: no
answer is a server error, and every status answered is documented in the OpenAPI schema.

The service is the real one (results index, object store, a deployed model, one classified
scene), served over real HTTP by uvicorn; the cases are generated from its own /openapi.json,
derandomised and bounded so the run stays short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.shared.events import ModelPromoted
from eostream.shared.ops import OpsServer

from .conftest import AUTH

EXAMPLES = 8  # per operation, generation mode and credential (derandomised)


async def test_openapi_fuzz_of_the_whole_api_with_and_without_the_key(
    settings: InferenceSettings,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
    fuzz: Any,
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    href = str(boadella_item("2020-06-21"))
    classified = await asyncio.to_thread(service.pipeline.classify_href, href)
    assert not classified.skipped  # one real result for the /results and /stac routes
    server = OpsServer(create_app(settings, service), "127.0.0.1", 0)
    await server.start()
    try:
        for headers in (AUTH, {}):
            failures, seen = await asyncio.to_thread(
                fuzz, server.url, headers, EXAMPLES, negative=bool(headers)
            )
            assert not failures, "\n".join(failures[:10])
            assert ("GET", "/results", 200) in seen and ("GET", "/stac/search", 200) in seen
            if not headers:  # writing routes refuse a request without the key
                assert ("POST", "/classify/item", 401) in seen, seen
    finally:
        await server.stop()
