"""OGC API - Processes: an older model version run as a job while the champion serves live
traffic, jobs that outlive the service, bad input, and the Part 1 requirement classes the
service declares checked against the standard's abstract tests (OGC 18-062r2, Annex A)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from eostream.inference import testing
from eostream.inference.api.app import create_app
from eostream.inference.api.ogc import CONFORMANCE, EXCEPTION, REL, SPEC, OgcError
from eostream.inference.api.processes import sync_result
from eostream.inference.errors import NotFoundError
from eostream.inference.jobs import FAILED, JobRunner, JobStore
from eostream.inference.metrics import JOB_OUTCOMES
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.tables import jobs_table
from eostream.inference.wiring import build_service
from eostream.shared import mlm
from eostream.shared.events import ModelPromoted

from .conftest import AUTH

EXECUTE = "/processes/classify-scene/execution"
ASYNC = {**AUTH, "Prefer": "respond-async"}
FINAL = ("successful", "failed", "dismissed")
JOBS = "eostream_inference_jobs_total"


@pytest.fixture
async def two_versions(
    service: InferenceService, make_model: Callable[..., ModelPromoted]
) -> AsyncIterator[InferenceService]:
    """Version 1 was champion once; version 2 is champion now (both real ONNX models)."""
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    await asyncio.to_thread(service.deployment.deploy, make_model("2"))
    yield service


async def _wait(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        status = (await client.get(f"/jobs/{job_id}")).json()
        if status["status"] in FINAL:
            return dict(status)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {status}")


async def test_an_old_version_runs_as_a_job_while_the_champion_serves(
    two_versions: InferenceService,
    client: httpx.AsyncClient,
    settings: InferenceSettings,
    boadella_item: Callable[[str], Path],
) -> None:
    service = two_versions
    swaps = service.deployment.swaps
    scene = str(boadella_item("2020-06-21"))
    live_scene = str(boadella_item("2020-09-14"))
    created = await client.post(
        EXECUTE, json={"inputs": {"scene": scene, "model": "models:/eurosat/1"}}, headers=ASYNC
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["jobID"]
    assert created.headers["Location"].endswith(f"/jobs/{job_id}")
    assert created.headers["Preference-Applied"] == "respond-async"
    assert created.json()["model"] == {"name": "eurosat", "version": "1"}

    live: list[tuple[str, str]] = []  # (job status when the request was sent, version used)
    while True:
        before = (await client.get(f"/jobs/{job_id}")).json()["status"]
        r = await client.post(
            "/classify/item", json={"item_href": live_scene, "replace": True}, headers=AUTH
        )
        assert r.status_code == 200, r.text
        live.append((before, r.json()["model_version"]))
        if before in FINAL:
            break
    job = await _wait(client, job_id)
    assert job["status"] == "successful" and job["progress"] == 100, job
    assert any(status in ("accepted", "running") for status, _ in live), live
    assert {version for _, version in live} == {"2"}, "live traffic left the champion"
    current = service.deployment.current
    assert current is not None and current.info.version == "2"
    assert service.deployment.swaps == swaps, "running version 1 swapped the live model"

    results = await client.get(f"/jobs/{job_id}/results")
    assert results.status_code == 200
    summary = results.json()["result"]
    assert (summary["model_name"], summary["model_version"]) == ("eurosat", "1")
    item = (await client.get(summary["links"]["item"].replace("http://test", ""))).json()
    assert item["properties"]["eostream:model_version"] == "1"
    assert ("eurosat", "1") in client_parts(client).cache.cached()

    # the job outlives the service: a new one over the same results index still serves it
    again = build_service(settings, consume=False)
    app = create_app(settings, again)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as other,
    ):
        assert (await other.get(f"/jobs/{job_id}")).json()["status"] == "successful"
        kept = (await other.get(f"/jobs/{job_id}/results")).json()["result"]
        assert kept["id"] == summary["id"]


def client_parts(client: httpx.AsyncClient) -> Any:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app.state.ogc  # type: ignore[attr-defined]


async def test_jobs_left_running_by_a_crash_are_marked_failed(
    service: InferenceService,
) -> None:
    """A job whose runner stopped touching it (a crash) fails; another live runner's job, touched
    within three heartbeats, is left alone."""
    store = JobStore(service.results.engine)
    crashed = store.create("classify-scene", {"scene": "x"}, ("eurosat", "1"))
    store.update(crashed.id, status="running", started=datetime.now(UTC))
    with service.results.engine.begin() as conn:  # its runner's last heartbeat: an hour ago
        conn.execute(
            jobs_table.update()
            .where(jobs_table.c.id == crashed.id)
            .values(updated=datetime.now(UTC) - timedelta(hours=1))
        )
    elsewhere = store.create("classify-scene", {"scene": "y"}, ("eurosat", "1"))
    runner = JobRunner(store, workers=1, max_pending=2, heartbeat=60)
    assert runner.start() == 1
    runner.stop()
    after = store.get(crashed.id)
    assert after is not None and after.status == FAILED and "stopped" in after.message
    kept = store.get(elsewhere.id)
    assert kept is not None and kept.status == "accepted"


def _mlm_item(tmp_path: Path, version: str, card: Any, blob: bytes) -> Path:
    onnx = tmp_path / f"ms13-{version}.onnx"
    onnx.write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    facts = mlm.MlmFacts(
        name="eurosat-ms",
        version=version,
        card=card,
        artifact_href=onnx.as_uri(),
        sha256=digest,
        size=len(blob),
        created=datetime.now(UTC),
    )
    path = tmp_path / f"mlm-{version}.json"
    path.write_text(json.dumps(mlm.build_item(facts, path.as_uri())))
    return path


async def test_bad_input_is_refused_and_live_traffic_goes_on(
    two_versions: InferenceService,
    client: httpx.AsyncClient,
    boadella_item: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    service = two_versions
    swaps = service.deployment.swaps
    scene = str(boadella_item("2020-06-21"))

    async def run(inputs: Any, body: Any = None) -> httpx.Response:
        return await client.post(
            EXECUTE, json=body if body is not None else {"inputs": inputs}, headers=ASYNC
        )

    for ref in ("models:/eurosat/99", "models:/eurosat@nobody", "models:/other/1", "7"):
        r = await run({"scene": scene, "model": ref})
        assert r.status_code == 404 and r.json()["description"], (ref, r.text)
    r = await run({"scene": scene, "model": "models:nonsense"})
    assert r.status_code == 400 and "models:/NAME" in r.json()["description"]
    r = await run({"scene": scene, "model": str(tmp_path / "missing-mlm.json")})
    assert r.status_code == 404, r.text

    # a real model, named by its MLM item, that needs B10: the L2A scene has no B10
    card = testing.model_card("ms13", name="eurosat-ms", level="L2A")
    item = _mlm_item(tmp_path, "3", card, testing.build_onnx(card, seed=3))
    r = await run({"scene": scene, "model": str(item)})
    assert r.status_code == 422 and r.json()["code"] == "band_mismatch", r.text
    assert "B10" in r.json()["description"]

    for raw in (b"{not json", b"[]", b'{"inputs": 3}', b'{"input": {}}'):
        r = await client.post(EXECUTE, content=raw, headers={**ASYNC, "Content-Type": "x"})
        assert r.status_code == 400 and r.json()["description"], (raw, r.text)
    r = await run({"scene": scene, "colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["description"]
    r = await run({})
    assert r.status_code == 400 and "scene" in r.json()["description"]
    r = await run({"scene": scene}, {"inputs": {"scene": scene}, "response": "sideways"})
    assert r.status_code == 400

    for path in ("/jobs/nope", "/jobs/nope/results"):
        r = await client.get(path)
        assert r.status_code == 404 and r.json()["type"] == EXCEPTION + "no-such-job"
    assert (await client.delete("/jobs/nope", headers=AUTH)).status_code == 404
    assert (await client.delete("/jobs/nope")).status_code == 401

    # nothing was created by refused requests, and the champion serves on, unswapped
    listing = (await client.get("/jobs")).json()
    assert listing["jobs"] == [] and listing["numberMatched"] == 0
    r = await client.post("/classify/item", json={"item_href": scene}, headers=AUTH)
    assert r.status_code == 200 and r.json()["model_version"] == "2"
    assert service.deployment.swaps == swaps


# -- the requirement classes the service declares, by their abstract tests ---------------------
async def test_declared_conformance_classes_pass_their_abstract_tests(
    two_versions: InferenceService,
    client: httpx.AsyncClient,
    boadella_item: Callable[[str], Path],
) -> None:
    scene = str(boadella_item("2020-06-21"))
    declared = (await client.get("/conformance")).json()["conformsTo"]
    assert set(declared) == set(CONFORMANCE)
    checks = {
        "core": _core,
        "ogc-process-description": _process_description,
        "json": _json,
        "job-list": _job_list,
        "dismiss": _dismiss,
    }
    for uri in declared:
        await checks[uri.removeprefix(SPEC)](client, scene)


def _rels(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {link["rel"]: link for link in document["links"]}


def _local(href: str) -> str:
    return href.replace("http://test", "")


async def _core(client: httpx.AsyncClient, scene: str) -> None:
    # /conf/core/landingpage-op, -success: links to the API definition, conformance, processes
    landing = await client.get("/")
    assert landing.status_code == 200
    rels = _rels(landing.json())
    assert {"service-desc", REL + "conformance", REL + "processes"} <= set(rels)
    # /conf/core/api-definition-op, -success
    api = await client.get(_local(rels["service-desc"]["href"]))
    assert api.status_code == 200 and "/jobs/{job_id}" in api.json()["paths"]
    # /conf/core/conformance-op, -success
    conf = (await client.get(_local(rels[REL + "conformance"]["href"]))).json()
    assert SPEC + "core" in conf["conformsTo"]
    # /conf/core/process-list-op, -success, limit
    listing = await client.get("/processes", params={"limit": 1})
    assert listing.status_code == 200
    processes = listing.json()["processes"]
    assert 1 <= len(processes) <= 1 and processes[0]["id"] == "classify-scene"
    assert (await client.get("/processes", params={"limit": 0})).status_code == 400
    # /conf/core/process-summary-links: a link to the description
    hrefs = {_local(link["href"]) for link in processes[0]["links"]}
    assert "/processes/classify-scene" in hrefs
    # /conf/core/process-description-op, -success; exception no-such-process
    assert (await client.get("/processes/classify-scene")).status_code == 200
    missing = await client.get("/processes/none")
    assert missing.status_code == 404 and missing.json()["type"] == EXCEPTION + "no-such-process"
    # /conf/core/process-execute-sync-document (default: sync)
    sync = await client.post(EXECUTE, json={"inputs": {"scene": scene}}, headers=AUTH)
    assert sync.status_code == 200 and sync.json()["result"]["model_version"] == "2"
    raw = await client.post(
        EXECUTE, json={"inputs": {"scene": scene}, "response": "raw"}, headers=AUTH
    )
    assert raw.status_code == 200 and raw.json()["model_version"] == "2"
    # /conf/core/process-execute-success-async: 201, Location, status info
    created = await client.post(EXECUTE, json={"inputs": {"scene": scene}}, headers=ASYNC)
    assert created.status_code == 201 and created.headers["Preference-Applied"] == "respond-async"
    status = (await client.get(_local(created.headers["Location"]))).json()
    # /conf/core/job-success: the statusInfo members
    assert {"jobID", "status", "type", "created", "updated", "progress", "links"} <= set(status)
    assert status["type"] == "process" and status["status"] in (
        "accepted",
        "running",
        "successful",
    )
    done = await _wait(client, status["jobID"])
    # /conf/core/job-results-op, -success-async-document; the results link
    assert REL + "results" in _rels(done)
    results = await client.get(_local(_rels(done)[REL + "results"]["href"]))
    assert results.status_code == 200 and "result" in results.json()
    # /conf/core/job-results-exception-results-not-ready: a job not yet run
    waiting = client_parts(client).jobs.create("classify-scene", {"scene": scene}, None)
    r = await client.get(f"/jobs/{waiting.id}/results")
    assert r.status_code == 404 and r.json()["type"] == EXCEPTION + "result-not-ready"
    client_parts(client).runner.dismiss(waiting.id)
    # /conf/core/job-exception-no-such-job, job-results-exception-no-such-job
    for path in ("/jobs/unknown", "/jobs/unknown/results"):
        r = await client.get(path)
        assert r.status_code == 404 and r.json()["type"] == EXCEPTION + "no-such-job"


async def _process_description(client: httpx.AsyncClient, scene: str) -> None:
    # /conf/ogc-process-description/process-description-success: the process.yaml members
    d = (await client.get("/processes/classify-scene")).json()
    assert {"id", "version", "inputs", "outputs", "jobControlOptions"} <= set(d)
    assert set(d["jobControlOptions"]) <= {"sync-execute", "async-execute", "dismiss"}
    assert set(d["outputTransmission"]) <= {"value", "reference"}
    for name, description in d["inputs"].items():
        assert {"schema", "minOccurs", "maxOccurs"} <= set(description), name
    assert d["inputs"]["scene"]["minOccurs"] == 1 and d["inputs"]["model"]["minOccurs"] == 0
    for name, description in d["outputs"].items():
        assert "schema" in description, name


async def _json(client: httpx.AsyncClient, scene: str) -> None:
    # /conf/json/definition: JSON resources answer application/json
    for path in ("/", "/conformance", "/processes", "/processes/classify-scene", "/jobs"):
        r = await client.get(path)
        assert r.headers["content-type"].startswith("application/json"), path
        json.loads(r.content)


async def _job_list(client: httpx.AsyncClient, scene: str) -> None:
    # /conf/job-list/job-list-op, -success; limit and its next link; filters
    listing = await client.get("/jobs")
    assert listing.status_code == 200
    jobs = listing.json()["jobs"]
    assert len(jobs) >= 2 and all(j["type"] == "process" for j in jobs)
    page = (await client.get("/jobs", params={"limit": 1})).json()
    assert len(page["jobs"]) == 1 and "next" in _rels(page)
    second = (await client.get(_local(_rels(page)["next"]["href"]))).json()
    assert second["jobs"][0]["jobID"] != page["jobs"][0]["jobID"]
    ok = (await client.get("/jobs", params={"status": "successful"})).json()["jobs"]
    assert ok and all(j["status"] == "successful" for j in ok)
    by_process = (await client.get("/jobs", params={"processID": "classify-scene"})).json()
    assert len(by_process["jobs"]) == len(jobs)
    assert (await client.get("/jobs", params={"processID": "other"})).json()["jobs"] == []
    assert (await client.get("/jobs", params={"status": "sideways"})).status_code == 400
    # datetime (when created), minDuration / maxDuration (seconds run)
    created = sorted(j["created"] for j in jobs)
    since = (await client.get("/jobs", params={"datetime": f"{created[-1]}/.."})).json()["jobs"]
    assert [j["created"] for j in since] == [created[-1]]
    before = (await client.get("/jobs", params={"datetime": f"../{created[0]}"})).json()["jobs"]
    assert [j["created"] for j in before] == [created[0]]
    ran = (await client.get("/jobs", params={"minDuration": 0})).json()["jobs"]
    assert ran and all(j.get("started") for j in ran)
    days = (await client.get("/jobs", params={"minDuration": 86_400})).json()
    assert days["jobs"] == [] and days["numberMatched"] == 0
    assert (await client.get("/jobs", params={"datetime": "yesterday"})).status_code == 400
    assert (await client.get("/jobs", params={"minDuration": -1})).status_code == 400


async def _dismiss(client: httpx.AsyncClient, scene: str) -> None:
    # /conf/dismiss/job-dismiss-op, -success: 200 with status dismissed; then no results
    description = (await client.get("/processes/classify-scene")).json()
    assert "dismiss" in description["jobControlOptions"]
    created = await client.post(EXECUTE, json={"inputs": {"scene": scene}}, headers=ASYNC)
    job_id = created.json()["jobID"]
    r = await client.delete(f"/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "dismissed"
    assert (await client.get(f"/jobs/{job_id}/results")).status_code == 404
    missing = await client.delete("/jobs/none", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["type"] == EXCEPTION + "no-such-job"


async def test_failed_and_dismissed_jobs_answer_their_own_status(
    service: InferenceService, client: httpx.AsyncClient
) -> None:
    """A job refused for a full queue answers 503 (it was 500), one that failed on a missing
    reference 422 as the synchronous request does (it was 404, read as "no such job"), and a
    synchronous run dismissed while it ran 409 (it was a 500: an empty results document)."""
    store = JobStore(service.results.engine)
    runner = JobRunner(store, workers=1, max_pending=2, heartbeat=60)

    def missing(progress: Any) -> dict[str, Any]:
        raise NotFoundError("the scene's item is gone (404)")

    gone = store.create("classify-scene", {"scene": "x"}, ("eurosat", "1"))
    with pytest.raises(NotFoundError):
        runner.run_now(gone, missing)
    busy = store.create("classify-scene", {"scene": "y"}, ("eurosat", "1"))
    store.update(busy.id, status=FAILED, message="8 jobs wait already", error_code="busy")

    def dismissed_meanwhile(progress: Any) -> dict[str, Any]:
        runner.dismiss(cut.id)  # another client's DELETE /jobs/{id}
        return {"result": {}}

    cut = store.create("classify-scene", {"scene": "z"}, ("eurosat", "1"))
    done = runner.run_now(cut, dismissed_meanwhile)
    with pytest.raises(OgcError) as refused:
        sync_result(done)
    assert refused.value.status == 409 and "dismissed" in refused.value.description

    r = await client.get(f"/jobs/{gone.id}/results")
    assert r.status_code == 422 and r.json()["code"] == "referenced_not_found", r.text
    r = await client.get(f"/jobs/{busy.id}/results")
    assert r.status_code == 503 and r.json()["code"] == "busy", r.text


async def test_jobs_are_counted_by_how_they_ended(service: InferenceService) -> None:
    """A job's bug was in the log only: operators see jobs by outcome (an unexpected error is
    EostreamInferenceJobErrors), each counted once (a job dismissed while it ran is dismissed)."""
    store = JobStore(service.results.engine)
    runner = JobRunner(store, workers=1, max_pending=2, heartbeat=60)
    before = {o: REGISTRY.get_sample_value(JOBS, {"outcome": o}) or 0.0 for o in JOB_OUTCOMES}

    def bug(progress: Any) -> dict[str, Any]:
        raise KeyError("a bug")

    def gone(progress: Any) -> dict[str, Any]:
        raise NotFoundError("the scene's item is gone (404)")

    def fine(progress: Any) -> dict[str, Any]:
        return {"result": {}}

    def dismissed_meanwhile(progress: Any) -> dict[str, Any]:
        runner.dismiss(cut.id)
        return {"result": {}}

    for work in (bug, gone, fine):
        with contextlib.suppress(KeyError, NotFoundError):
            runner.run_now(store.create("classify-scene", {}, ("eurosat", "1")), work)
    cut = store.create("classify-scene", {}, ("eurosat", "1"))
    runner.run_now(cut, dismissed_meanwhile)
    after = {o: REGISTRY.get_sample_value(JOBS, {"outcome": o}) or 0.0 for o in JOB_OUTCOMES}
    assert {o: after[o] - before[o] for o in JOB_OUTCOMES} == {
        "successful": 1, "failed": 1, "error": 1, "dismissed": 1, "lost": 0,
    }  # fmt: skip
