"""Ingest's HTTP app: the operators' routes (/livez, /readyz, /metrics) and, when
``INGEST_PUSH__ENABLED``, ``POST /notifications`` for pushed item notifications.

The push route checks the signature (:func:`eostream.ingest.push.verify`) on the raw body before
anything else is read from it, then hands the item the CloudEvent names to
:class:`eostream.ingest.arrivals.Arrivals`. Only the leader replica takes notifications (one
seen-set writer, ADR 0006): a standby answers 503, and the sender retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from eostream.ingest import metrics, push
from eostream.ingest.arrivals import Arrivals
from eostream.ingest.errors import PushRefused
from eostream.ingest.settings import IngestSettings, PushSettings
from eostream.shared import http_errors
from eostream.shared.body_limit import valid_length
from eostream.shared.errors import BusUnavailableError, is_transient
from eostream.shared.http_errors import error_body, error_responses
from eostream.shared.ops import ReadinessCheck, ops_router

SERVICE = "ingest"
PUSH_PATH = "/notifications"
#: what a 503 asks the sender to wait before its retry
RETRY_AFTER_SECONDS = 5
#: who takes arrivals now: the leader's Arrivals, None while this replica stands by
ArrivalsNow = Callable[[], Arrivals | None]

log = logging.getLogger(__name__)


class PushAnswer(BaseModel):
    """What became of a pushed notification."""

    outcome: Literal["announced", "duplicate", "filtered"] = Field(
        description="announced: published as SceneDiscovered now; duplicate: announced "
        "before (pushed or polled); filtered: the source's filter leaves it out"
    )
    item_id: str
    collection: str | None
    source: str = Field(description="the configured source the item was read from")
    detail: str


_EVENT_BODY = {
    "description": "A CloudEvent (HTTP binding): binary mode (ce-* headers, the STAC item or "
    '{"id", "collection"} as the JSON body) or structured mode (application/cloudevents+json). '
    "Signed with Standard Webhooks headers webhook-id, webhook-timestamp, webhook-signature.",
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/cloudevents+json": {"schema": {"type": "object"}},
    },
}


def push_router(settings: PushSettings, arrivals_now: ArrivalsNow) -> APIRouter:
    router = APIRouter(tags=["push"])
    secret = settings.secret.get_secret_value() if settings.secret is not None else ""

    @router.post(
        PUSH_PATH,
        summary="Take a signed CloudEvent naming a new or updated STAC item",
        description="The item is read from the configured source it belongs to and announced "
        "once, like a polled one (same seen-set, checks and dead letters). 401: unsigned, "
        "bad signature or stale timestamp; 422: not a taken event type, no item named, a "
        "collection no source watches, an item filtered out or rejected (dead-lettered).",
        response_model=PushAnswer,
        responses=error_responses(400, 401, 404, 413, 422, 503),
        openapi_extra={"requestBody": _EVENT_BODY},
    )
    async def notifications(request: Request) -> PushAnswer | JSONResponse:
        try:
            headers = {k.lower(): v for k, v in request.headers.items()}
            # unsigned or stale: refused before the body is read
            push.check_headers(headers, now=time.time(), tolerance=settings.tolerance_seconds)
            body = await _read_body(request, settings.max_body_bytes)
            push.verify(
                secret, headers, body, now=time.time(), tolerance=settings.tolerance_seconds
            )
            arrival, _kind = push.parse(headers, body, accepted_types=settings.event_types)
            arrivals = arrivals_now()
            if arrivals is None:
                raise PushRefused(
                    503, "standby", "this replica stands by; the leader takes notifications"
                )
            try:
                taken = await arrivals.take(arrival)
            except Exception as exc:
                # the broker or the seen-set's database is down (the bus's publish retries
                # spent, or a driver's OperationalError): the item is not marked seen, so the
                # sender's retry (or the poll) announces it once they are back; if only the
                # marking failed, after the publish, that announcement repeats the same event
                # id, which consumers take once
                if not isinstance(exc, BusUnavailableError) and not is_transient(exc):
                    raise
                log.warning("push of %s not taken now: %s", arrival.item_id, exc)
                raise PushRefused(
                    503, "unavailable", "the bus or ingest's state is unavailable; retry later"
                ) from exc
        except PushRefused as exc:
            if exc.status in (400, 401, 413):
                metrics.NOTIFICATIONS.labels("push", "refused").inc()
            answer = JSONResponse(error_body(exc.code, exc.description), status_code=exc.status)
            if exc.status == 401:
                answer.headers["WWW-Authenticate"] = 'Signature realm="webhook"'
            elif exc.status == 503:
                answer.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return answer
        if taken.outcome in ("rejected", "filtered"):
            code = "item_rejected" if taken.outcome == "rejected" else "filtered_out"
            return JSONResponse(error_body(code, taken.detail), status_code=422)
        return PushAnswer(
            outcome=taken.outcome,
            item_id=taken.item_id,
            collection=taken.collection,
            source=taken.source,
            detail=taken.detail,
        )

    return router


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and not valid_length(declared):
        raise PushRefused(400, "bad_request", "Content-Length is not a number of bytes")
    if declared is not None and int(declared) > limit:
        raise PushRefused(413, "too_large", f"the body is over the {limit} bytes allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PushRefused(413, "too_large", f"the body is over the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    settings: IngestSettings,
    *,
    readiness: ReadinessCheck,
    liveness: ReadinessCheck | None = None,
    arrivals_now: ArrivalsNow | None = None,
    ops: bool = True,
    pushed: bool | None = None,
) -> FastAPI:
    """The ops routes (``ops``) and the push route (``pushed``; default: when push is enabled
    and has no port of its own), one error body (``eostream.shared.http_errors``)."""
    if pushed is None:
        pushed = settings.push.enabled and settings.push.port is None
    app = FastAPI(
        title=f"eostream {SERVICE}",
        description="Operations and pushed STAC item notifications (CloudEvents).",
        docs_url=None,
        redoc_url=None,
    )
    http_errors.install(app)
    if ops:
        app.include_router(ops_router(SERVICE, readiness, liveness))
    if pushed:
        app.include_router(push_router(settings.push, arrivals_now or (lambda: None)))
    return app
