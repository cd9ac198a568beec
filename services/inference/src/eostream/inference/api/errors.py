"""Errors -> HTTP, in one place: ``{"code": ..., "description": ...}`` bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eostream.inference.errors import (
    BadInputError,
    BandMismatchError,
    CoarseSceneError,
    LevelMismatchError,
    ModelLoadError,
    NoModelError,
    NotFoundError,
    ResultNotFoundError,
    TooLargeError,
)
from eostream.shared.errors import RetryableError

log = logging.getLogger(__name__)

STATUS: list[tuple[type[Exception], int, str]] = [
    (ResultNotFoundError, 404, "not_found"),
    (NotFoundError, 422, "referenced_not_found"),
    (TooLargeError, 413, "too_large"),
    (BandMismatchError, 422, "band_mismatch"),
    (LevelMismatchError, 422, "level_mismatch"),
    (CoarseSceneError, 422, "coarse_scene"),
    (ModelLoadError, 422, "model_invalid"),
    (BadInputError, 400, "bad_input"),
    (NoModelError, 503, "no_model"),
    (RetryableError, 503, "unavailable"),
]


def error_body(code: str, description: str) -> dict[str, str]:
    return {"code": code, "description": description}


def install(app: FastAPI) -> None:
    async def domain(_request: Request, exc: Exception) -> JSONResponse:
        for cls, status, code in STATUS:
            if isinstance(exc, cls):
                return JSONResponse(error_body(code, str(exc)), status_code=status)
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error"), status_code=500)

    async def http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        return JSONResponse(error_body("invalid_request", "; ".join(parts)), status_code=422)

    for cls, _status, _code in STATUS:
        app.add_exception_handler(cls, domain)
    app.add_exception_handler(StarletteHTTPException, http)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
