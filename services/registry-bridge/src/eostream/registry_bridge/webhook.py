"""The MLflow webhook receiver: verify the HMAC signature, then queue the work.

MLflow 3.17 signs ``f"{delivery_id}.{timestamp}.{body}"`` with HMAC-SHA256 and sends
``X-MLflow-Signature: v1,<base64>``, ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp``
(mlflow/webhooks/delivery.py). Deliveries older than the tolerance are refused (replays), and
a delivery without those headers or out of the window is refused before its body is read (its
size is capped by :mod:`.request_guard`). The handler only queues; the work happens in the
bridge's worker, so MLflow gets its answer at once. Errors answer ``{"code", "description"}``
on an app with :func:`eostream.shared.http_errors.install`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from eostream.registry_bridge import metrics
from eostream.registry_bridge.registry import VERSION_PATTERN
from eostream.shared.http_errors import error_body, error_responses

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"

MISSING_HEADERS = "missing signature, delivery id or timestamp header"
#: the longest model name a delivery may carry (the bridge watches names of up to 256)
MAX_NAME = 256

#: a timestamp header: integer seconds since the epoch, ASCII digits (12 reach year 33658)
_SECONDS = re.compile(r"[0-9]{1,12}")
Enqueue = Callable[[str, str | None, str], Awaitable[None]]  # (name, version or None, source)


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def check_headers(
    *,
    signature: str | None,
    delivery_id: str | None,
    timestamp: str | None,
    tolerance_seconds: int,
    now: float | None = None,
) -> str | None:
    """What can be refused before the body is read: None when the signature headers are there
    and the delivery is fresh, else why not."""
    if not signature or not delivery_id or not timestamp:
        return MISSING_HEADERS
    if not _SECONDS.fullmatch(timestamp):  # int() took 400 digits, then float() overflowed
        return "the timestamp header is not a Unix time"
    sent = int(timestamp)
    if abs((now if now is not None else time.time()) - sent) > tolerance_seconds:
        return "the delivery is too old or from the future (replay?)"
    return None


def verify_signature(
    secret: str,
    *,
    body: bytes,
    signature: str | None,
    delivery_id: str | None,
    timestamp: str | None,
    tolerance_seconds: int,
    now: float | None = None,
) -> str | None:
    """None when the delivery is authentic and fresh, else why not."""
    problem = check_headers(
        signature=signature,
        delivery_id=delivery_id,
        timestamp=timestamp,
        tolerance_seconds=tolerance_seconds,
        now=now,
    )
    if problem is not None or not (signature and delivery_id and timestamp):
        return problem or MISSING_HEADERS
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    expected = sign(secret, delivery_id, timestamp, text)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        return "the signature does not match"
    return None


class WebhookAck(BaseModel):
    status: Literal["queued", "ignored"] = Field(
        description="queued: the bridge will look at the version or the champion; ignored: an "
        "event the bridge does not act on"
    )


class BadPayload(ValueError):
    """A signed delivery whose body is not an MLflow webhook payload (400)."""


def read_payload(body: bytes) -> tuple[str, str, str, str | None]:
    """``(entity, action, model name, version)`` of an MLflow webhook body; the version only
    for ``model_version.created``, where it is required. Raises :class:`BadPayload` naming what
    is wrong (a signed sender may still send nonsense: never a 500)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise BadPayload(f"the body is not JSON: {detail}"[:300]) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise BadPayload("the body must be an object with entity, action and a data object")
    entity, action, data = payload.get("entity"), payload.get("action"), payload["data"]
    if not isinstance(entity, str) or not isinstance(action, str):
        raise BadPayload("entity and action must be strings")
    name = data.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise BadPayload(f"data.name must be a model name of 1 to {MAX_NAME} characters")
    if (entity, action) != ("model_version", "created"):
        return entity, action, name, None
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
        raise BadPayload(f"data.version must be a version number ({VERSION_PATTERN})")
    return entity, action, name, version


def webhook_router(secret: str | None, tolerance_seconds: int, enqueue: Enqueue) -> APIRouter:
    router = APIRouter(tags=["webhooks"])

    @router.post(
        "/webhooks/mlflow",
        status_code=202,
        summary="MLflow model registry webhook",
        responses=error_responses(400, 401, 413, 503),
    )
    async def receive(request: Request) -> WebhookAck:
        # everything that can be refused without the body is, before it is read
        if secret is None:
            metrics.WEBHOOKS.labels("rejected").inc()
            raise HTTPException(
                503, error_body("webhooks_disabled", "set BRIDGE_WEBHOOK_SECRET to accept webhooks")
            )
        signature = request.headers.get(SIGNATURE_HEADER)
        delivery_id = request.headers.get(DELIVERY_ID_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        problem = check_headers(
            signature=signature,
            delivery_id=delivery_id,
            timestamp=timestamp,
            tolerance_seconds=tolerance_seconds,
        )
        body = b""
        if problem is None:
            body = await request.body()  # at most BRIDGE_MAX_BODY_BYTES (RequestGuard)
            problem = verify_signature(
                secret,
                body=body,
                signature=signature,
                delivery_id=delivery_id,
                timestamp=timestamp,
                tolerance_seconds=tolerance_seconds,
            )
        if problem is not None:
            metrics.WEBHOOKS.labels("rejected").inc()
            log.warning("webhook refused: %s", problem)
            raise HTTPException(401, error_body("bad_signature", problem))
        try:
            entity, action, name, version = read_payload(body)
        except BadPayload as exc:
            metrics.WEBHOOKS.labels("rejected").inc()
            raise HTTPException(400, error_body("bad_payload", str(exc))) from None
        metrics.WEBHOOKS.labels("accepted").inc()
        if (entity, action) == ("model_version", "created"):
            await enqueue(name, version, "webhook")
        elif (entity, action) == ("model_version_alias", "created"):
            await enqueue(name, None, "webhook")
        else:
            return WebhookAck(status="ignored")
        return WebhookAck(status="queued")

    return router
