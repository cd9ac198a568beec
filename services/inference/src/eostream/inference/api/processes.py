"""OGC API - Processes (Part 1, synchronous execution) for scene classification."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from eostream.inference.api.classify import CLASSIFY, ItemRequest, classify_named_item
from eostream.inference.api.deps import ApiKey, PipelineDep, Settings
from eostream.inference.api.results import summary
from eostream.inference.api.schemas import ExecuteResult, ProcessDescription, ProcessList
from eostream.inference.errors import ResultNotFoundError
from eostream.shared.http_errors import error_responses

router = APIRouter(prefix="/processes", tags=["processes"])
PROCESS_ID = "classify-scene"

DESCRIPTION: dict[str, Any] = {
    "id": PROCESS_ID,
    "title": "Classify a Sentinel-2 scene into EuroSAT land-cover classes",
    "version": "1.0.0",
    "jobControlOptions": ["sync-execute"],
    "outputTransmission": ["value"],
    "inputs": {
        "item_href": {
            "title": "STAC item href",
            "schema": {"type": "string"},
            "minOccurs": 1,
            "maxOccurs": 1,
        },
        "replace": {
            "title": "recompute an existing result",
            "schema": {"type": "boolean"},
            "minOccurs": 0,
            "maxOccurs": 1,
        },
    },
    "outputs": {
        "result": {
            "title": "result summary with links to the COG, quicklook and STAC item",
            "schema": {"type": "object"},
        },
    },
}


class Execute(BaseModel):
    model_config = ConfigDict(extra="allow")

    inputs: ItemRequest


def _link(request: Request, rel: str, path: str) -> dict[str, str]:
    return {"rel": rel, "href": f"{request.base_url}{path.lstrip('/')}", "type": "application/json"}


@router.get("", summary="The processes this server offers", response_model=ProcessList)
def list_processes(request: Request) -> dict[str, Any]:
    brief = {k: DESCRIPTION[k] for k in ("id", "title", "version", "jobControlOptions")}
    brief["links"] = [_link(request, "self", f"processes/{PROCESS_ID}")]
    return {"processes": [brief], "links": [_link(request, "self", "processes")]}


def _check(process_id: str) -> None:
    if process_id != PROCESS_ID:
        raise ResultNotFoundError(f"no process {process_id!r}; GET /processes lists them")


@router.get(
    "/{process_id}",
    summary="A process description",
    response_model=ProcessDescription,
    responses=error_responses(404, 422),
)
def get_process(request: Request, process_id: str) -> dict[str, Any]:
    _check(process_id)
    return DESCRIPTION | {"links": [_link(request, "self", f"processes/{process_id}")]}


@router.post(
    "/{process_id}/execution",
    summary="Execute synchronously",
    dependencies=[ApiKey],
    response_model=ExecuteResult,
    responses={**CLASSIFY, **error_responses(404)},
)
async def execute(
    request: Request, process_id: str, body: Execute, pipeline: PipelineDep, settings: Settings
) -> dict[str, Any]:
    _check(process_id)
    outcome = await run_in_threadpool(
        classify_named_item,
        pipeline,
        settings,
        body.inputs.item_href,
        replace=body.inputs.replace,
    )
    return {"result": summary(outcome.record, str(request.base_url)) | {"skipped": outcome.skipped}}
