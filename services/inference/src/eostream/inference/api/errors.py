"""Errors -> HTTP, in one place: which domain error answers which status and code. The body is
the shared :class:`~eostream.shared.http_errors.ErrorBody`, ``{"code", "description"}``."""

from __future__ import annotations

from fastapi import FastAPI

from eostream.inference.errors import (
    BadInputError,
    BandMismatchError,
    CoarseSceneError,
    LevelMismatchError,
    ModelLoadError,
    NoModelError,
    NotFoundError,
    ResultNotFoundError,
    SourceNotAllowedError,
    TooLargeError,
)
from eostream.shared import http_errors
from eostream.shared.errors import InvalidItemError, RetryableError

#: (domain error, HTTP status, code); the first that matches wins, so subclasses come first.
STATUS: list[tuple[type[Exception], int, str]] = [
    (ResultNotFoundError, 404, "not_found"),
    (NotFoundError, 422, "referenced_not_found"),
    (SourceNotAllowedError, 422, "source_not_allowed"),
    (TooLargeError, 413, "too_large"),
    (BandMismatchError, 422, "band_mismatch"),
    (LevelMismatchError, 422, "level_mismatch"),
    (CoarseSceneError, 422, "coarse_scene"),
    (ModelLoadError, 422, "model_invalid"),
    (BadInputError, 400, "bad_input"),
    (InvalidItemError, 400, "bad_input"),  # a STAC item's field read outside validation
    (NoModelError, 503, "no_model"),
    (RetryableError, 503, "unavailable"),
]


def install(app: FastAPI) -> None:
    http_errors.install(app, STATUS)
