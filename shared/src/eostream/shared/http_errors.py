"""One error body for every eostream REST API: ``{"code": ..., "description": ...}``.

Each service lists which of its exceptions answer which status and code; :func:`install` adds the
handlers, so a domain error, an ``HTTPException`` (with a string or an ``{"code", "description"}``
detail), a validation error and an unexpected error all answer the same shape. Routes document it
with ``responses=error_responses(401, 404)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """What every eostream REST API answers on an error."""

    code: str = Field(description="A stable, machine-readable error code, e.g. 'not_found'")
    description: str = Field(description="What went wrong, for a person")


#: (exception class, HTTP status, error code); the first class that matches wins.
ErrorMapping = Iterable[tuple[type[Exception], int, str]]

HTTP_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    503: "unavailable",
}


def error_body(code: str, description: str) -> dict[str, str]:
    return ErrorBody(code=code, description=description).model_dump()


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route: each status documented with :class:`ErrorBody`."""
    return {status: {"model": ErrorBody} for status in statuses}


def _detail_body(status: int, detail: object) -> dict[str, str]:
    if isinstance(detail, Mapping) and "code" in detail and "description" in detail:
        return error_body(str(detail["code"]), str(detail["description"]))
    return error_body(HTTP_CODES.get(status, "http_error"), str(detail))


def install(app: FastAPI, mapping: ErrorMapping = ()) -> None:
    """Answer every error of ``app`` with an :class:`ErrorBody`."""
    table = list(mapping)

    async def domain(_request: Request, exc: Exception) -> JSONResponse:
        for cls, status, code in table:
            if isinstance(exc, cls):
                return JSONResponse(error_body(code, str(exc)), status_code=status)
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error"), status_code=500)

    async def http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            _detail_body(exc.status_code, exc.detail),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        return JSONResponse(error_body("invalid_request", "; ".join(parts)), status_code=422)

    for cls, _status, _code in table:
        app.add_exception_handler(cls, domain)
    app.add_exception_handler(StarletteHTTPException, http)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
