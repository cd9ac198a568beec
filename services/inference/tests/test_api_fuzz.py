"""schemathesis over the whole inference API (issue #20), with and without the API key: no
answer is a server error, and every status answered is documented in the OpenAPI schema.

The service is the real one (results index, object store, a deployed model, one classified
scene), served over real HTTP by uvicorn; the cases are generated from its own /openapi.json,
derandomised and bounded so the run stays short.
"""

from __future__ import annotations

import asyncio
import itertools
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


def fuzz(
    url: str, headers: dict[str, str], examples: int, *, negative: bool
) -> tuple[list[str], set[tuple[str, str, int]]]:
    """Every operation of the API at ``url`` with ``headers``, in schemathesis' positive and
    negative modes: the failures (one line each) and the (method, path, status) answered."""
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.core.result import Ok
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import status_code_conformance

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    seen: set[tuple[str, str, int]] = set()
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    modes = list(GenerationMode) if negative else [GenerationMode.POSITIVE]
    for operation, mode in itertools.product(operations, modes):
        if mode == GenerationMode.NEGATIVE and not (len(operation.query) or len(operation.body)):
            continue  # path segments only: routed or 404, slow to make invalid

        @given(case=operation.as_strategy(mode))
        @hsettings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=url, headers=headers, timeout=60)
            seen.add((case.method, case.operation.path, response.status_code))
            try:
                case.validate_response(
                    response, checks=[not_a_server_error, status_code_conformance]
                )
            except (AssertionError, FailureGroup) as exc:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    f"{response.text[:160]!r} ({type(exc).__name__})"
                )

        try:
            run()
        except Unsatisfiable:  # no negative case for an operation without inputs
            assert mode == GenerationMode.NEGATIVE, operation.path
    return failures, seen


async def test_openapi_fuzz_of_the_whole_api_with_and_without_the_key(
    settings: InferenceSettings,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
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
