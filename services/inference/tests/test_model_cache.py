"""The session cache of models other than the live one, the model references a request may
give, and the jobs table on the stack's PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pytest

from eostream.inference import testing
from eostream.inference.errors import BadInputError
from eostream.inference.jobs import JobStore
from eostream.inference.model_cache import (
    ModelCache,
    ModelRef,
    ModelResolver,
    UnknownModelError,
    parse_ref,
)
from eostream.inference.results import build_results_store
from eostream.inference.service import InferenceService
from eostream.shared import mlm
from eostream.shared.events import ModelPromoted


def test_references_parse() -> None:
    assert parse_ref(None) == ModelRef("champion")
    assert parse_ref("champion") == ModelRef("champion")
    assert parse_ref("models:/eurosat@challenger") == ModelRef(
        "alias", name="eurosat", alias="challenger"
    )
    assert parse_ref("models:/eurosat/12") == ModelRef("version", name="eurosat", version="12")
    assert parse_ref(" 3 ") == ModelRef("version", version="3")
    assert parse_ref("s3://eostream/models/eurosat/3/item.json").kind == "item"
    for bad in ("models:/eurosat", "models:/eurosat/v1", "models:/ bad/1"):
        with pytest.raises(BadInputError):
            parse_ref(bad)


async def test_the_cache_is_bounded_and_frees_what_it_evicts(
    service: InferenceService, make_model: Callable[..., ModelPromoted]
) -> None:
    deployment = service.deployment
    for version in ("1", "2", "3"):
        await asyncio.to_thread(deployment.deploy, make_model(version))
    swaps = deployment.swaps
    resolver = ModelResolver(deployment, service.store)
    cache = ModelCache(deployment, size=1)
    one, two = resolver.resolve(parse_ref("1")), resolver.resolve(parse_ref("models:/eurosat/2"))
    assert resolver.resolve(parse_ref(None)).live and resolver.resolve(parse_ref("3")).live
    with cache.lease(one) as m1:
        assert m1.info.version == "1" and cache.cached() == [("eurosat", "1")]
        with cache.lease(two) as m2:  # evicts version 1, which a job still uses: not freed yet
            assert m2.info.version == "2" and cache.cached() == [("eurosat", "2")]
            assert cache.freed == 0
            assert m1.run(_batch()).shape == (2, 10)  # still usable by its job
        assert cache.freed == 0
    assert cache.freed == 1  # freed when its last lease ended
    with cache.lease(two):
        pass
    assert cache.loads == 2  # version 2 came from the cache
    cache.clear()
    assert cache.freed == 2 and len(cache) == 0
    current = deployment.current
    assert current is not None and current.info.version == "3" and deployment.swaps == swaps


def _batch() -> npt.NDArray[np.float32]:
    return np.zeros((2, 3, 64, 64), np.float32)


async def test_a_shipped_version_resolves_from_the_models_store(
    service: InferenceService, make_model: Callable[..., ModelPromoted]
) -> None:
    """models:/NAME/VERSION never promoted here: the bridge's layout in the object store."""
    await asyncio.to_thread(service.deployment.deploy, make_model("2"))
    card = testing.model_card("rgb", name="eurosat")
    blob = testing.build_onnx(card, seed=7)
    store = service.store
    store.put_bytes("models/eurosat/7/model.onnx", blob, "application/octet-stream")
    facts = mlm.MlmFacts(
        name="eurosat",
        version="7",
        card=card,
        artifact_href=store.uri("models/eurosat/7/model.onnx"),
        sha256=hashlib.sha256(blob).hexdigest(),
        size=len(blob),
        created=datetime.now(UTC),
    )
    item = mlm.build_item(facts, store.uri("models/eurosat/7/item.json"))
    store.put_bytes("models/eurosat/7/item.json", json.dumps(item).encode(), "application/json")
    resolver = ModelResolver(service.deployment, store)
    resolved = resolver.resolve(parse_ref("models:/eurosat/7"))
    assert not resolved.live and resolved.info.mlm_item_href == store.uri(
        "models/eurosat/7/item.json"
    )
    with ModelCache(service.deployment, size=1).lease(resolved) as model:
        assert model.info.version == "7" and model.card.bands == card.bands
    with pytest.raises(UnknownModelError):
        resolver.resolve(parse_ref("models:/eurosat/8"))


@pytest.mark.stack
def test_jobs_table_on_the_stack_postgresql() -> None:
    dsn = os.environ.get("EOSTREAM_PG_DSN")
    if not dsn:
        pytest.fail("EOSTREAM_PG_DSN is not set: export `deploy/local/stack env`")
    results = build_results_store(dsn.rstrip("/") + "/results")
    try:
        jobs = JobStore(results.engine)
        process = f"test-{uuid.uuid4().hex[:8]}"
        first = jobs.create(process, {"scene": "a"}, ("eurosat", "1"))
        second = jobs.create(process, {"scene": "b"}, None)
        assert jobs.update(first.id, status="successful", result={"result": {"x": 1}})
        assert not jobs.update(first.id, unless=("successful",), status="failed")
        listed, total = jobs.page(process_id=[process], limit=1)
        assert total == 2 and [j.id for j in listed] == [second.id]
        done = jobs.get(first.id)
        assert done is not None and done.result == {"result": {"x": 1}}
        assert done.created.tzinfo is not None and done.inputs == {"scene": "a"}
    finally:
        results.close()
