"""Bad input found by an audit, each refused with its reason and nothing lost: asset fields of
the wrong type and out-of-range times are dead letters (not a consumer stopped forever) and 400s
(not 500s); query parameters that overflowed a parser are 400s or 416s; every file a REST user's
scene or model names is checked against the source policy; and a job runs the version it
resolved, whatever is promoted while it waits."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from eostream.inference import testing
from eostream.inference.api.app import create_app
from eostream.inference.api.ranges import Unsatisfiable, parse_range
from eostream.inference.errors import BadInputError
from eostream.inference.model_cache import ModelCache, ModelResolver, parse_ref
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings, SourcesSettings
from eostream.inference.wiring import build_service
from eostream.shared import mlm, sentinel2
from eostream.shared.errors import Disposition, InvalidItemError, classify
from eostream.shared.events import ModelPromoted
from eostream.shared.sources_policy import GENERIC

from .conftest import AUTH

REFUSED = {"code": "source_not_allowed", "description": GENERIC}
EXECUTE = "/processes/classify-scene/execution"


# -- A: asset fields of the wrong type (the items themselves: test_item_validation.py) --------
def test_the_shared_rules_raise_a_bad_item_error_that_is_dead_lettered() -> None:
    for asset, what in (
        ({"href": "b04.tif", "roles": 5}, "roles"),
        ({"href": "b04.tif", "roles": ["data", 1]}, "roles"),
        ({"href": "b04.tif", "eo:bands": {"name": "red"}}, "eo:bands"),
    ):
        with pytest.raises(InvalidItemError, match=what):
            sentinel2.band_sources({"red": asset})
        with pytest.raises(InvalidItemError, match=what):
            sentinel2.bands_of({"assets": {"red": asset}})
    for rb, what in (({"scale": [1]}, "scale"), ({"scale": "a"}, "scale"), ({"offset": {}}, "")):
        with pytest.raises(InvalidItemError, match=what) as caught:
            sentinel2.asset_radiometry({"raster:bands": [rb]}, 1, "05.00")
        assert classify(caught.value) is Disposition.DEAD_LETTER
    # null fields are absent ones; numbers as before
    assert sentinel2.asset_radiometry({"raster:bands": [{"scale": None}]}, 1, None).source == (
        "default"
    )
    assert sentinel2.asset_radiometry({"raster:bands": [{"scale": 2}]}, 1, None).scale == 2.0
    assert classify(TypeError("a real bug")) is Disposition.STOP  # still stops the consumer


# -- B: query parameters -----------------------------------------------------------------------
async def test_query_input_that_overflowed_is_a_400(client: httpx.AsyncClient) -> None:
    deep = "[" * 1500
    box = "bbox=0,0,1,1"
    for path in (
        "/stac/search?datetime=0001-01-01T00:00:00%2B01:00",
        "/stac/search?datetime=9999-12-31T23:59:59-01:00",
        "/stac/search?datetime=2020-01-01T00:00:00Z/9999-12-31T23:59:59-01:00",
        f"/results/aggregate?{box}&datetime=0001-01-01T00:00:00%2B01:00",
        "/results?datetime=0001-01-01T00:00:00%2B01:00",
        "/results?datetime=9999-12-31T23:59:59-01:00",
        "/jobs?datetime=0001-01-01T00:00:00%2B01:00",
        f"/stac/search?intersects={deep}",
        f"/stac/search?filter-lang=cql2-json&filter={deep}",
        "/stac/search?filter-lang=cql2-json&filter="
        + '{"op":"not","args":[' * 400
        + '{"op":"=","args":[{"property":"id"},"x"]}'
        + "]}" * 400,
        f"/results/aggregate?intersects={deep}",
        "/stac/search?ids=" + ",".join(f"s{i}" for i in range(1001)),
    ):
        r = await client.get(path)
        assert r.status_code == 400, (path[:80], r.status_code, r.text[:300])
        assert r.json()["description"], path[:80]
    r = await client.get("/stac/search?ids=" + ",".join(f"s{i}" for i in range(1001)))
    assert "ids" in r.json()["description"] and "1000" in r.json()["description"]


def test_range_positions_of_thousands_of_digits() -> None:
    huge = "9" * 5000
    with pytest.raises(Unsatisfiable):
        parse_range(f"bytes={huge}-", 100)
    with pytest.raises(Unsatisfiable):
        parse_range(f"bytes={huge}-{huge}", 100)
    assert parse_range(f"bytes=0-{huge}", 100) == (0, 99)
    assert parse_range(f"bytes=-{huge}", 100) == (0, 99)
    assert parse_range(f"bytes={'0' * 4999}5-", 100) == (5, 99)
    assert parse_range("bytes=10-19", 100) == (10, 19)
    # last before first: an invalid range, ignored (RFC 9110 14.2), not "past the end" (416)
    assert parse_range("bytes=5-1", 100) is None
    assert parse_range("bytes=500-1", 100) is None


# -- C: every href a REST user's scene or model names ------------------------------------------
@pytest.fixture
async def loopback(
    settings: InferenceSettings, make_model: Callable[..., ModelPromoted]
) -> AsyncIterator[tuple[InferenceService, httpx.AsyncClient]]:
    """A service that allows 127.0.0.1 (a local STAC API) but nothing else private."""
    cfg = settings.model_copy(
        update={"sources": SourcesSettings(allowed_networks=("127.0.0.1/32",))}
    )
    svc = build_service(cfg, consume=False)
    await svc.start()
    try:
        await asyncio.to_thread(svc.deployment.deploy, make_model("1"))
        transport = httpx.ASGITransport(app=create_app(cfg, svc))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield svc, c
    finally:
        await svc.stop()


async def test_an_inline_scene_gets_the_redirect_check(
    loopback: tuple[InferenceService, httpx.AsyncClient],
    redirector: str,
    boadella_item: Callable[[str], Path],
) -> None:
    _svc, client = loopback
    item = json.loads(boadella_item("2020-06-21").read_text())
    item["assets"]["data"]["href"] = redirector + "/band.tif"  # redirects to another host
    r = await client.post(EXECUTE, json={"inputs": {"scene": item}}, headers=AUTH)
    assert (r.status_code, r.json()) == (422, REFUSED), r.text
    item["assets"]["data"]["href"] = "http://169.254.169.254/latest/b.tif"
    r = await client.post(EXECUTE, json={"inputs": {"scene": item}}, headers=AUTH)
    assert (r.status_code, r.json()) == (422, REFUSED), r.text


def _model_item(tmp_path: Path, int8_href: str) -> Path:
    """A real model's MLM item whose int8 asset (check passed, checksum given) is at int8_href."""
    card = testing.model_card("rgb", name="eurosat")
    blob = testing.build_onnx(card, seed=5)
    onnx = tmp_path / "eurosat-5.onnx"
    onnx.write_bytes(blob)
    path = tmp_path / "mlm-5.json"
    facts = mlm.MlmFacts(
        name="eurosat",
        version="5",
        card=card,
        artifact_href=onnx.as_uri(),
        sha256=hashlib.sha256(blob).hexdigest(),
        size=len(blob),
        created=datetime.now(UTC),
    )
    item = mlm.build_item(facts, path.as_uri())
    item["assets"][mlm.INT8_ASSET] = {
        "href": int8_href,
        "type": mlm.ONNX_MEDIA_TYPE,
        "roles": ["data"],
        "file:checksum": "1220" + "0" * 64,
        mlm.PRECISION: "int8",
        "eostream:int8_check": "passed",
    }
    path.write_text(json.dumps(item))
    return path


async def test_the_int8_file_of_a_named_model_is_checked(
    loopback: tuple[InferenceService, httpx.AsyncClient],
    redirector: str,
    boadella_item: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    svc, client = loopback
    scene = str(boadella_item("2020-06-21"))
    for href in ("http://169.254.169.254/latest/meta-data/x.onnx", "/etc/passwd"):
        item = _model_item(tmp_path, href)
        r = await client.post(
            EXECUTE, json={"inputs": {"scene": scene, "model": str(item)}}, headers=AUTH
        )
        assert (r.status_code, r.json()) == (422, REFUSED), (href, r.text)
    # an allowed host that redirects elsewhere: refused when read, never an fp32 fallback
    resolver = ModelResolver(svc.deployment, svc.store)
    cfg = svc.settings.model_copy(update={"int8_on_cpu": True, "providers": ("cpu",)})
    resolver.settings = cfg
    svc.deployment.settings = cfg
    resolved = resolver.resolve(parse_ref(str(_model_item(tmp_path, redirector + "/band.tif"))))
    assert resolved.int8 is not None and resolved.policy is not None
    with pytest.raises(BadInputError, match="not allowed"):
        with ModelCache(svc.deployment, size=0).lease(resolved):
            pass


# -- D: a job runs the version it resolved -----------------------------------------------------
async def test_a_job_resolved_to_the_live_version_runs_it_after_a_promotion(
    service: InferenceService, make_model: Callable[..., ModelPromoted]
) -> None:
    deployment = service.deployment
    await asyncio.to_thread(deployment.deploy, make_model("2"))
    resolver = ModelResolver(deployment, service.store)
    cache = ModelCache(deployment, size=1)
    resolved = resolver.resolve(parse_ref("models:/eurosat/2"))
    assert resolved.live and resolved.info.version == "2"
    with cache.lease(resolved) as model:  # still live: the live model itself, nothing loaded
        assert model.info.version == "2" and cache.loads == 0
    await asyncio.to_thread(deployment.deploy, make_model("3"))  # promoted while it waits
    with cache.lease(resolved) as model:
        assert model.info.version == "2"
        assert model.run(_batch()).shape[0] == 2
    current = deployment.current
    assert current is not None and current.info.version == "3"
    assert cache.loads == 1


def _batch() -> npt.NDArray[np.float32]:
    return np.zeros((2, 3, 64, 64), np.float32)
