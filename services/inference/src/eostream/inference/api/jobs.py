"""OGC API - Processes jobs: ``/jobs`` (job-list), ``/jobs/{id}``, ``/jobs/{id}/results`` and
``DELETE /jobs/{id}`` (dismiss, with the API key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from eostream.inference.api.deps import ApiKey
from eostream.inference.api.errors import STATUS
from eostream.inference.api.ogc import (
    BadRequestRoute,
    OgcError,
    OgcLink,
    StatusInfo,
    no_such_job,
    status_info,
)
from eostream.inference.api.params import parse_datetime
from eostream.inference.api.processes import PartsDep, ResultDocument
from eostream.inference.errors import BadInputError
from eostream.inference.jobs import ACCEPTED, FAILED, RUNNING, STATUSES, SUCCESSFUL, Job
from eostream.shared.http_errors import error_responses

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=BadRequestRoute)
#: a failed job's error code -> the status its results answer
_FAILED_STATUS = {code: status for _cls, status, code in reversed(STATUS)} | {
    "restarted": 503,
    "busy": 503,  # JobsBusyError: the job never ran, too many waited
    "internal": 500,
}


class JobList(BaseModel):
    jobs: list[StatusInfo]
    links: list[OgcLink]
    numberMatched: int


@router.get(
    "",
    summary="The jobs, newest first",
    response_model=JobList,
    responses=error_responses(400, 422),
)
async def list_jobs(
    request: Request,
    parts: PartsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    status: Annotated[list[str] | None, Query(max_length=5)] = None,
    process_id: Annotated[list[str] | None, Query(alias="processID", max_length=5)] = None,
    kind: Annotated[list[str] | None, Query(alias="type", max_length=5)] = None,
    created: Annotated[
        str | None,
        Query(
            alias="datetime",
            max_length=100,
            description="when the job was created: an instant or an interval (a/b, ../b, a/..)",
        ),
    ] = None,
    min_duration: Annotated[
        int | None, Query(alias="minDuration", ge=0, description="ran at least (seconds)")
    ] = None,
    max_duration: Annotated[
        int | None, Query(alias="maxDuration", ge=0, description="ran at most (seconds)")
    ] = None,
) -> dict[str, Any]:
    bad = sorted(set(status or ()) - set(STATUSES))
    if bad:
        raise OgcError(400, "", "bad_request", f"unknown status {bad}; one of {list(STATUSES)}")
    try:
        created_between = parse_datetime(created)
    except BadInputError as error:
        raise OgcError(400, "", "bad_request", str(error)) from None
    jobs: list[Job] = []
    total = 0
    if not kind or "process" in kind:  # every job here is a process job
        jobs, total = await run_in_threadpool(
            parts.jobs.page,
            limit=limit,
            offset=offset,
            status=status,
            process_id=process_id,
            created=created_between,
            duration=(min_duration, max_duration),
        )
    query = request.url.include_query_params
    links = [{"rel": "self", "href": str(request.url), "type": "application/json"}]
    if offset + limit < total:
        links.append(
            {"rel": "next", "href": str(query(offset=offset + limit)), "type": "application/json"}
        )
    if offset > 0:
        links.append(
            {
                "rel": "prev",
                "href": str(query(offset=max(0, offset - limit))),
                "type": "application/json",
            }
        )
    return {
        "jobs": [status_info(request, j) for j in jobs],
        "links": links,
        "numberMatched": total,
    }


@router.get(
    "/{job_id}",
    summary="A job's status",
    response_model=StatusInfo,
    responses=error_responses(400, 404, 422),
)
async def get_job(request: Request, job_id: str, parts: PartsDep) -> dict[str, Any]:
    job = await run_in_threadpool(parts.jobs.get, job_id)
    if job is None:
        raise no_such_job(job_id)
    return status_info(request, job)


@router.get(
    "/{job_id}/results",
    summary="A job's results (the results document)",
    response_model=ResultDocument,
    responses=error_responses(400, 404, 413, 422, 500, 503),
)
async def get_results(job_id: str, parts: PartsDep) -> Any:
    job = await run_in_threadpool(parts.jobs.get, job_id)
    if job is None:
        raise no_such_job(job_id)
    if job.status in (ACCEPTED, RUNNING):
        raise OgcError(
            404, "result-not-ready", "not_ready", f"job {job_id} is {job.status}; try again"
        )
    if job.status == FAILED:
        code = job.error_code or "internal"
        raise OgcError(_FAILED_STATUS.get(code, 500), "", code, f"the job failed: {job.message}")
    if job.status != SUCCESSFUL or job.result is None:
        raise no_such_job(job_id)  # dismissed: its results are no longer served
    return job.result


@router.delete(
    "/{job_id}",
    summary="Dismiss a job (a waiting one never runs)",
    dependencies=[ApiKey],
    response_model=StatusInfo,
    responses=error_responses(400, 401, 404, 422),
)
async def dismiss(request: Request, job_id: str, parts: PartsDep) -> dict[str, Any]:
    job = await run_in_threadpool(parts.runner.dismiss, job_id)
    if job is None:
        raise no_such_job(job_id)
    return status_info(request, job)
