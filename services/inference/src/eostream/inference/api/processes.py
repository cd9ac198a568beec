"""OGC API - Processes, Part 1: the landing page, ``/conformance``, ``/processes`` and the
execution of ``classify-scene``, synchronous or (``Prefer: respond-async``) as a job.

The process runs the model the request names (``inputs.model``: an MLM item href,
``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a version; default the live champion) on the
scene it names (``inputs.scene``: an item href, ``{"href": ...}`` or an inline STAC item). A
model other than the live one comes from the :class:`~eostream.inference.model_cache.ModelCache`,
so the live model is never swapped. Every execution is a job (``/jobs``, kept in the results
index). The conventions are pygeoapi's (ADR 0013).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from eostream.inference.api.classify import CLASSIFY, check_item_sources, load_checked_item
from eostream.inference.api.deps import ApiKey, Service
from eostream.inference.api.ogc import (
    CONFORMANCE,
    JSON,
    REL,
    BadRequestRoute,
    Conformance,
    Landing,
    OgcError,
    ProcessDescription,
    ProcessList,
    StatusInfo,
    link,
    status_info,
)
from eostream.inference.api.results import summary
from eostream.inference.api.schemas import ClassifyResult
from eostream.inference.errors import BadInputError, NotFoundError
from eostream.inference.jobs import (
    FAILED,
    SUCCESSFUL,
    Job,
    JobRunner,
    JobsBusyError,
    JobStore,
    Progress,
)
from eostream.inference.model_cache import (
    ModelCache,
    ModelResolver,
    Pinned,
    Resolved,
    UnknownModelError,
    parse_ref,
)
from eostream.inference.pipeline import Pipeline, parse_item
from eostream.inference.scene import prepare_scene
from eostream.inference.service import InferenceService
from eostream.shared.http_errors import error_responses

router = APIRouter(tags=["processes"], route_class=BadRequestRoute)
PROCESS_ID = "classify-scene"
MODEL_HELP = (
    "the model to run: an MLM item href, models:/NAME@ALIAS, models:/NAME/VERSION or a version "
    "number of the live model's name; default: the live champion"
)

DESCRIPTION: dict[str, Any] = {
    "id": PROCESS_ID,
    "title": "Classify a Sentinel-2 scene into EuroSAT land-cover classes",
    "description": "Whole-scene classification with the model you name (default: the champion)",
    "version": "2.0.0",
    "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
    "outputTransmission": ["value"],
    "inputs": {
        "scene": {
            "title": "the scene: a STAC item href, {'href': ...} or an inline STAC item",
            "schema": {
                "oneOf": [
                    {"type": "string", "format": "uri-reference"},
                    {"type": "object", "required": ["href"]},
                    {"type": "object", "required": ["type", "id", "assets"]},
                ]
            },
            "minOccurs": 1,
            "maxOccurs": 1,
        },
        "model": {
            "title": MODEL_HELP,
            "schema": {"type": "string"},
            "minOccurs": 0,
            "maxOccurs": 1,
        },
        "replace": {
            "title": "recompute an existing result",
            "schema": {"type": "boolean", "default": False},
            "minOccurs": 0,
            "maxOccurs": 1,
        },
        "allow_coarse": {
            "title": "classify a scene much coarser than the model's GSD at its own resolution",
            "schema": {"type": "boolean"},
            "minOccurs": 0,
            "maxOccurs": 1,
        },
    },
    "outputs": {
        "result": {
            "title": "result summary with links to the COG, quicklook and STAC item",
            "schema": {"type": "object", "contentMediaType": "application/json"},
        },
    },
}


# -- documents --------------------------------------------------------------------------------
class Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scene: str | dict[str, Any] | None = Field(
        default=None, description="STAC item href, {'href': ...} or an inline STAC item"
    )
    item_href: str | None = Field(
        default=None, max_length=4000, description="the scene as an href (older name of scene)"
    )
    model: str | None = Field(default=None, max_length=4000, description=MODEL_HELP)
    replace: bool = False
    allow_coarse: bool | None = None


class Execute(BaseModel):
    """The standard's execute request: ``inputs``, ``outputs``, ``response``."""

    model_config = ConfigDict(extra="forbid")

    inputs: Inputs
    outputs: dict[str, dict[str, Any]] | None = Field(
        default=None, description="only 'result' exists; transmissionMode value"
    )
    response: Literal["document", "raw"] = Field(
        default="document", description="document: {'result': ...}; raw: the result alone"
    )


class ResultDocument(BaseModel):
    result: ClassifyResult


# -- parts built by create_app ----------------------------------------------------------------
@dataclass
class Parts:
    resolver: ModelResolver
    cache: ModelCache
    jobs: JobStore
    runner: JobRunner

    @classmethod
    def build(cls, service: InferenceService) -> Parts:
        s = service.settings
        jobs = JobStore(service.results.engine)
        return cls(
            resolver=ModelResolver(service.deployment, service.store, s.models_prefix),
            cache=ModelCache(service.deployment, s.model_cache_size),
            jobs=jobs,
            runner=JobRunner(
                jobs,
                workers=s.jobs_workers,
                max_pending=s.jobs_max_pending,
                heartbeat=s.jobs_heartbeat_seconds,
            ),
        )


def get_parts(request: Request) -> Parts:
    parts: Parts = request.app.state.ogc
    return parts


PartsDep = Annotated[Parts, Depends(get_parts)]


# -- landing, conformance, processes ----------------------------------------------------------
@router.get("/", summary="Landing page (OGC API)", response_model=Landing)
def landing(request: Request) -> dict[str, Any]:
    return {
        "title": "eostream inference",
        "description": "Land-cover classification of Sentinel-2 scenes (OGC API - Processes)",
        "links": [
            link(request, "self", "/", title="this document"),
            link(
                request,
                "service-desc",
                "openapi.json",
                "application/vnd.oai.openapi+json;version=3.1",
                title="the API definition",
            ),
            link(request, "service-doc", "docs", "text/html", title="the API documentation"),
            link(request, REL + "conformance", "conformance", title="conformance classes"),
            link(request, "conformance", "conformance", title="conformance classes"),
            link(request, REL + "processes", "processes", title="processes"),
            link(request, REL + "job-list", "jobs", title="jobs"),
            link(request, "data", "stac", title="the results as a STAC API"),
        ],
    }


@router.get("/conformance", summary="Conformance classes", response_model=Conformance)
def conformance() -> dict[str, Any]:
    return {"conformsTo": CONFORMANCE}


def _summary(request: Request) -> dict[str, Any]:
    keys = ("id", "title", "version", "jobControlOptions", "outputTransmission")
    brief = {k: DESCRIPTION[k] for k in keys}
    brief["links"] = [
        link(request, "self", f"processes/{PROCESS_ID}", title="process description"),
        link(request, REL + "execute", f"processes/{PROCESS_ID}/execution", title="execute"),
    ]
    return brief


@router.get(
    "/processes",
    summary="The processes this server offers",
    response_model=ProcessList,
    responses=error_responses(400, 422),
)
def list_processes(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 10
) -> dict[str, Any]:
    return {
        "processes": [_summary(request)][:limit],
        "links": [link(request, "self", "processes")],
    }


def _check(process_id: str) -> None:
    if process_id != PROCESS_ID:
        raise OgcError(
            404, "no-such-process", "not_found", f"no process {process_id!r}; GET /processes"
        )


@router.get(
    "/processes/{process_id}",
    summary="A process description",
    response_model=ProcessDescription,
    responses=error_responses(400, 404, 422),
)
def get_process(request: Request, process_id: str) -> dict[str, Any]:
    _check(process_id)
    return DESCRIPTION | {"links": _summary(request)["links"]}


# -- execution --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    item: dict[str, Any]
    href: str
    model: Resolved


def _scene(service: InferenceService, inputs: Inputs) -> tuple[dict[str, Any], str]:
    """The scene item and its href, every raster it names checked against the source policy."""
    scene = inputs.scene if inputs.scene is not None else inputs.item_href
    if inputs.scene is not None and inputs.item_href is not None:
        raise BadInputError("give the scene once: inputs.scene (item_href is its older name)")
    if isinstance(scene, dict) and set(scene) <= {"href", "type", "rel", "title"}:
        scene = scene.get("href")
    if isinstance(scene, str) and scene.strip():
        return load_checked_item(service.settings, scene), scene
    if isinstance(scene, dict):
        item = parse_item(json.dumps(scene).encode(), "the inline scene")
        href = f"inline:{item['id']}"
        check_item_sources(service.settings, item, href)  # as /classify/item: redirects too
        return item, href
    raise BadInputError("inputs.scene is required: a STAC item href or an inline STAC item")


def _prepare(service: InferenceService, parts: Parts, inputs: Inputs) -> Plan:
    """Everything checked before a job exists: the model is known and loads, the scene is
    readable, allowed and has the bands the model needs."""
    try:
        resolved = parts.resolver.resolve(parse_ref(inputs.model))
    except NotFoundError as exc:
        raise UnknownModelError(f"model {inputs.model!r}: {exc}") from None
    item, href = _scene(service, inputs)
    s = service.settings
    with parts.cache.lease(resolved) as model:
        prepare_scene(
            item,
            href,
            model.card,
            policy=s.level_mismatch,
            href_rewrites=s.asset_href_rewrites,
            b10_fill=s.b10_fill_reflectance,
        )
    return Plan(item, href, resolved)


def _work(service: InferenceService, parts: Parts, plan: Plan, inputs: Inputs, base: str) -> Any:
    def work(progress: Progress) -> dict[str, Any]:
        with parts.cache.lease(plan.model) as model:
            progress(10, f"classifying with {model.info.name} v{model.info.version}")
            pipeline = Pipeline(service.settings, service.store, service.results, Pinned(model))
            outcome = pipeline.classify_item(
                plan.item,
                plan.href,
                replace=inputs.replace,
                allow_coarse=inputs.allow_coarse,
                progress=progress,
                requested=True,
            )
        return {"result": summary(outcome.record, base) | {"skipped": outcome.skipped}}

    return work


ASYNC_HEADERS = {
    "Location": {"description": "the job's status", "schema": {"type": "string"}},
    "Preference-Applied": {"description": "respond-async", "schema": {"type": "string"}},
}


@router.post(
    "/processes/{process_id}/execution",
    summary="Execute: synchronously, or as a job with 'Prefer: respond-async'",
    dependencies=[ApiKey],
    response_model=ResultDocument,
    responses={
        201: {"model": StatusInfo, "description": "a job was created", "headers": ASYNC_HEADERS},
        **CLASSIFY,
        **error_responses(404, 409),
    },
)
async def execute(
    request: Request,
    response: Response,
    process_id: str,
    body: Execute,
    service: Service,
    parts: PartsDep,
    prefer: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    _check(process_id)
    if body.outputs and set(body.outputs) - {"result"}:
        raise BadInputError("the only output is 'result'")
    plan = await run_in_threadpool(_prepare, service, parts, body.inputs)
    info = plan.model.info
    inputs = body.inputs.model_dump(mode="json") | {"scene": plan.href}
    inputs.pop("item_href", None)
    job = await run_in_threadpool(parts.jobs.create, PROCESS_ID, inputs, (info.name, info.version))
    work = _work(service, parts, plan, body.inputs, str(request.base_url))
    if prefer and "respond-async" in prefer.lower():
        try:
            await run_in_threadpool(parts.runner.submit, job, work)
        except JobsBusyError as exc:  # the job never ran: say so in its record too
            await run_in_threadpool(
                parts.jobs.update, job.id, status=FAILED, message=str(exc), error_code=exc.code
            )
            raise
        return _accepted(request, job)
    done = await run_in_threadpool(parts.runner.run_now, job, work)
    monitor = {"Link": f'<{request.base_url}jobs/{done.id}>; rel="monitor"'}
    result = sync_result(done)
    if body.response == "raw":  # the one output alone (documented under the process outputs)
        return Response(json.dumps(result["result"]), media_type=JSON, headers=monitor)
    response.headers.update(monitor)
    return result


def sync_result(done: Job) -> dict[str, Any]:
    """The results document of a job run synchronously; a job dismissed while it ran (DELETE
    /jobs/{id} from another client) has none to give: 409, not an empty document."""
    if done.status != SUCCESSFUL or done.result is None:
        raise OgcError(
            409,
            "",
            "dismissed",
            f"job {done.id} was {done.status} while it ran ({done.message}): no result",
        )
    return done.result


def _accepted(request: Request, job: Job) -> Response:
    """201 with the job's status, where it lives, and that the preference was applied."""
    document = StatusInfo.model_validate(status_info(request, job)).model_dump(mode="json")
    return Response(
        json.dumps(document),
        201,
        media_type="application/json",
        headers={
            "Location": f"{request.base_url}jobs/{job.id}",
            "Preference-Applied": "respond-async",
        },
    )
