"""What the OGC API - Processes routes share: the conformance classes, link relations,
exception types, the status-info document and the exception body.

Exceptions keep the project's error body (``{"code", "description"}``, ADR 0012) and add the
members of the standard's exception document (``type``, ``title``, ``status``, ``detail``), so a
client of either reads what it expects.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from eostream.inference.jobs import SUCCESSFUL, Job

SPEC = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"
#: the Part 1 requirement classes this service implements (not oas30: FastAPI writes OpenAPI
#: 3.1; not html, callback or kvp execution)
CONFORMANCE = [SPEC + c for c in ("core", "ogc-process-description", "json", "job-list", "dismiss")]
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
EXCEPTION = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
JSON = "application/json"


class OgcError(Exception):
    """An error the standard names: answered with its exception type."""

    def __init__(self, status: int, kind: str, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.kind = kind
        self.code = code
        self.description = description


def no_such_job(job_id: str) -> OgcError:
    return OgcError(404, "no-such-job", "not_found", f"no job {job_id!r}; GET /jobs lists them")


def body(status: int, kind: str, code: str, description: str) -> dict[str, Any]:
    return {
        "code": code,
        "description": description,
        "type": EXCEPTION + kind if kind else "about:blank",
        "title": code.replace("_", " "),
        "status": status,
        "detail": description,
    }


def install(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, OgcError):  # registered for OgcError only
            raise exc
        return JSONResponse(body(exc.status, exc.kind, exc.code, exc.description), exc.status)

    app.add_exception_handler(OgcError, handle)


class BadRequestRoute(APIRoute):
    """Routes whose invalid parameters or body answer 400, as the standard asks (the rest of
    the API answers 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                parts = [
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
                ]
                raise self.refusal("; ".join(parts)) from None

        return run

    @staticmethod
    def refusal(description: str) -> Exception:
        """The error a 400 is answered with (here the OGC exception body)."""
        return OgcError(400, "", "bad_request", description)


def link(request: Request, rel: str, path: str, media: str = JSON, **extra: str) -> dict[str, str]:
    return {"rel": rel, "href": f"{request.base_url}{path.lstrip('/')}", "type": media, **extra}


class OgcLink(BaseModel):
    model_config = ConfigDict(extra="allow")

    rel: str
    href: str
    type: str | None = None
    title: str | None = None


class Landing(BaseModel):
    title: str
    description: str
    links: list[OgcLink]


class Conformance(BaseModel):
    conformsTo: list[str]


class ProcessSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    title: str
    version: str
    jobControlOptions: list[str]
    outputTransmission: list[str]
    links: list[OgcLink]


class ProcessList(BaseModel):
    processes: list[ProcessSummary]
    links: list[OgcLink]


class ProcessDescription(ProcessSummary):
    description: str
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]


class JobModel(BaseModel):
    name: str | None
    version: str | None


class StatusInfo(BaseModel):
    """The standard's statusInfo document, with the model the job ran."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="always 'process'")
    processID: str
    jobID: str
    status: str = Field(description="accepted, running, successful, failed or dismissed")
    message: str
    progress: int = Field(ge=0, le=100, description="percent done (10..90: rows classified)")
    created: str
    started: str | None
    finished: str | None
    updated: str
    model: JobModel
    links: list[OgcLink]


def status_info(request: Request, job: Job) -> dict[str, Any]:
    links = [link(request, "self", f"jobs/{job.id}", title="this job")]
    if job.status == SUCCESSFUL:
        links.append(link(request, REL + "results", f"jobs/{job.id}/results", title="results"))
    return {
        "type": "process",
        "processID": job.process_id,
        "jobID": job.id,
        "status": job.status,
        "message": job.message,
        "progress": job.progress,
        "created": job.created.isoformat(),
        "started": job.started.isoformat() if job.started else None,
        "finished": job.finished.isoformat() if job.finished else None,
        "updated": job.updated.isoformat(),
        "model": {"name": job.model_name, "version": job.model_version},
        "links": links,
    }
