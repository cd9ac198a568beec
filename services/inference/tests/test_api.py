"""The REST surface: STAC API searched by pystac-client over real HTTP, auth, errors, metrics,
and a short schemathesis fuzz of the OpenAPI schema (no 5xx)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from prometheus_client import REGISTRY
from pystac_client import Client

from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.events import ModelPromoted
from eostream.shared.ops import OpsServer

from .conftest import AUTH


async def _classify_three(
    service: InferenceService,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1", seed=0))
    for date in ("2020-06-21", "2021-07-16", "2022-06-01"):
        await asyncio.to_thread(service.pipeline.classify_href, str(boadella_item(date)))


async def test_pystac_client_searches_results(
    settings: InferenceSettings,
    service: InferenceService,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await _classify_three(service, boadella_item, make_model)
    server = OpsServer(create_app(settings, service), "127.0.0.1", 0)
    await server.start()
    try:

        def search() -> tuple[list[str], list[str], list[str], str]:
            client = Client.open(f"{server.url}/stac")
            all_items = [
                i.id for i in client.search(collections=[settings.collection_id], limit=2).items()
            ]
            in_2021 = [i.id for i in client.search(datetime="2021-01-01/2021-12-31").items()]
            elsewhere = [i.id for i in client.search(bbox=[0, 0, 1, 1]).items()]
            coll = client.get_collection(settings.collection_id)
            assert coll is not None
            first = next(coll.get_items())
            return all_items, in_2021, elsewhere, first.properties["eostream:model_version"]

        all_items, in_2021, elsewhere, version = await asyncio.to_thread(search)
    finally:
        await server.stop()
    assert len(all_items) == 3  # paged two at a time through the next links
    assert in_2021 == ["boadella-2021-07-16__eurosat__v1"]
    assert elsewhere == [] and version == "1"


async def test_results_filters_and_errors(
    service: InferenceService,
    client: httpx.AsyncClient,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    await _classify_three(service, boadella_item, make_model)
    everything = (await client.get("/results")).json()
    assert everything["total"] == 3
    shares = {r["scene_id"]: r["class_shares"] for r in everything["results"]}
    name = max(shares["boadella-2020-06-21"], key=lambda k: shares["boadella-2020-06-21"][k])
    threshold = shares["boadella-2020-06-21"][name]
    expected = sorted(s for s, cs in shares.items() if cs[name] >= threshold)
    got = (await client.get("/results", params={"class": name, "min_share": threshold})).json()
    assert sorted(r["scene_id"] for r in got["results"]) == expected
    assert (await client.get("/results", params={"model_version": "9"})).json()["total"] == 0
    bad_bbox = await client.get("/results", params={"bbox": "1,2,x"})
    assert bad_bbox.status_code == 400 and bad_bbox.json()["code"] == "bad_input"
    bad_time = await client.get("/results", params={"datetime": "yesterday"})
    assert bad_time.status_code == 400
    misspelt = await client.get("/results", params={"class": name.lower() + "x"})
    assert misspelt.status_code == 400 and "unknown class" in misspelt.json()["description"]
    assert name in misspelt.json()["description"]  # the classes there are
    missing = await client.get("/results/nope/cog")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    metrics = (await client.get("/metrics")).text
    assert "eostream_inference_scenes_total" in metrics
    assert 'eostream_inference_model_info{alias="champion",name="eurosat",provider=' in metrics
    assert "eostream_inference_request_duration_seconds_bucket" in metrics
    assert (await client.get("/livez")).json()["status"] == "ok"


async def test_the_request_metric_counts_unhandled_errors_and_bounds_methods(
    settings: InferenceSettings, service: InferenceService
) -> None:
    """A bug's 500 (an error no handler answers) is what the API-errors alert exists for: it was
    not counted. A method is the client's word: one not HTTP's own is one series, "other"."""
    app = create_app(settings, service)

    @app.get("/boom")
    async def boom() -> None:
        raise KeyError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/boom")).status_code == 500
        await c.request("PROPFIND", "/results")
        await c.request("BREW", "/results")
    metric = "eostream_inference_request_duration_seconds_count"
    assert REGISTRY.get_sample_value(metric, {"route": "/boom", "method": "GET", "status": "500"})
    methods = {
        s.labels["method"]
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == metric and s.labels["route"] == "/results"
    }
    assert "other" in methods and not methods & {"PROPFIND", "BREW"}


async def test_not_ready_without_a_model(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 503 and "no model" in r.json()["detail"]
    r = await client.post("/classify/item", json={"item_href": "/nowhere.json"}, headers=AUTH)
    assert r.status_code == 503 and r.json()["code"] == "no_model"


async def test_openapi_documents_every_body(client: httpx.AsyncClient) -> None:
    """Every route of the service names its response body, and every error status it documents
    answers the one error body (the ops probes come from shared and are not counted)."""
    schema = (await client.get("/openapi.json")).json()
    ops = {"/livez", "/readyz", "/metrics"}
    routes = [(p, m, op) for p, item in schema["paths"].items() for m, op in item.items()]
    assert len([r for r in routes if r[0] not in ops]) == 52  # 8 of them /tiles
    for path, method, op in routes:
        if path in ops:
            continue
        responses = op["responses"]
        if "204" in responses:  # deleted: no body
            assert "content" not in responses["204"], (method, path)
        else:
            ok = (responses.get("200") or responses["201"])["content"]
            media, body = next(iter(ok.items()))
            if media == "application/xml":  # WMTS capabilities: an XML document
                assert path.endswith("/WMTSCapabilities.xml"), path
            else:
                assert media.startswith("image/") or "$ref" in body["schema"], (method, path, ok)
        for status, answer in responses.items():
            if status == "201":  # created: a job's status document, a new subscription
                assert answer["content"]["application/json"]["schema"]["$ref"].endswith(
                    ("/StatusInfo", "/SubscriptionCreated")
                )
            elif status == "206":  # part of a file (a Range request): its bytes
                assert next(iter(answer["content"])).startswith("image/"), (method, path)
            elif status not in ("200", "204"):
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[object]:
    """An app with a model and one result, started in its own loop for schemathesis."""
    import hashlib

    from pydantic import SecretStr

    from eostream.inference import testing

    tmp = tmp_path_factory.mktemp("fuzz")
    model = tmp / "m.onnx"
    model.write_bytes(testing.build_onnx(testing.model_card()))
    cfg = InferenceSettings(
        api_key=SecretStr("k"),
        bus="memory",
        local_store_root=tmp / "o",
        results_db=f"sqlite:///{tmp}/r.db",
        intra_op_threads=1,
        initial_model_uri=str(model),
        initial_model_sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
        max_upload_bytes=100_000,
        _env_file=None,
    )
    svc = build_service(cfg, consume=False)
    asyncio.run(svc.start())
    tif = data_dir / "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2/Boadella_2020-06-21.tif"
    item = testing.item_for_raster(
        tif,
        "fuzz-scene",
        ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"],
    )
    (tmp / "item.json").write_text(json.dumps(item))
    svc.pipeline.classify_href(str(tmp / "item.json"))
    yield create_app(cfg, svc)
    asyncio.run(svc.stop())


def test_openapi_fuzz_has_no_server_errors(fuzz_app: object) -> None:
    import schemathesis
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Ok

    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    failures: list[str] = []
    calls: dict[str, int] = {}

    def fuzz(label: str, strategy: Any) -> None:
        @given(case=strategy)
        @hsettings(
            max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(headers={"X-API-Key": "k"})
            calls[label] = calls.get(label, 0) + 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    f"{response.text[:200]}"
                )
            case.validate_response(response, checks=[not_a_server_error])

        run()

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        fuzz(operation.label, operation.as_strategy())
    assert not failures, failures[:5]
    assert len(calls) >= 20 and sum(calls.values()) >= 100, calls
