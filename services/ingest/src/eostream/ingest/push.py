"""Pushed notifications: the signature check and the CloudEvent, both pure (no I/O).

Signature: Standard Webhooks (https://www.standardwebhooks.com): HMAC-SHA256 with the shared
secret over ``{webhook-id}.{webhook-timestamp}.{body}``, sent base64 in ``webhook-signature`` as
``v1,<signature>`` (several, space separated, during a key rotation). The timestamp must be
within the tolerance of now, so a captured request cannot be replayed later; within it, a replay
names an item already announced and changes nothing (the seen-set). The secret is the
credential: no separate API key (ADR 0016).

Event: a CloudEvent (HTTP binding, binary mode with ``ce-*`` headers or structured mode with
``application/cloudevents+json``) of an accepted type (EOEPCA resource registration's
``org.eoepca.resource-registration.resource.added`` by default) whose data is the STAC item or
a reference to it (``id``, ``collection``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Collection, Mapping
from typing import Any

from eostream.ingest.arrivals import Arrival, arrival_from_data
from eostream.ingest.errors import PushRefused

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of a secret, not one


def signing_key(secret: str) -> bytes:
    """The HMAC key: ``whsec_<base64>`` decoded (Standard Webhooks), else the text's bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            pass
    return secret.encode("utf-8")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for this request (what a sender computes)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of a request (for senders, tests, the benchmark)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: float
) -> str:
    """The webhook id of a request signed with ``secret``; raises :class:`PushRefused` (401)
    when a header is missing, the timestamp is not within ``tolerance`` of ``now`` or no
    signature matches (compared in constant time)."""
    webhook_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    given = headers.get("webhook-signature")
    if not webhook_id or not stamp or not given:
        raise PushRefused(
            401,
            "unauthorized",
            "unsigned: webhook-id, webhook-timestamp and webhook-signature are required "
            "(Standard Webhooks, HMAC-SHA256 with the shared secret)",
        )
    if not stamp.isdigit():
        raise PushRefused(401, "bad_signature", "webhook-timestamp is not integer seconds")
    if abs(now - int(stamp)) > tolerance:
        raise PushRefused(
            401,
            "stale_timestamp",
            f"webhook-timestamp is more than {tolerance:g} s from now: refused against replay",
        )
    expected = sign(secret, webhook_id, int(stamp), body).encode()
    for candidate in given.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return webhook_id
    raise PushRefused(401, "bad_signature", "no v1 signature matches the request")


def parse(
    headers: Mapping[str, str], body: bytes, *, accepted_types: Collection[str]
) -> tuple[Arrival, str]:
    """The arrival a CloudEvent names, and its type. Raises :class:`PushRefused`: 400 when the
    request is not a CloudEvent, 422 when its type is not accepted or it names no item."""
    from cloudevents.v1.exceptions import GenericException
    from cloudevents.v1.http import from_http

    try:
        event = from_http(dict(headers), body, data_unmarshaller=_json_data)
    except (GenericException, ValueError) as exc:
        raise PushRefused(
            400,
            "bad_request",
            f"not a CloudEvent (HTTP binding, binary or structured mode): {exc}"[:500],
        ) from None
    kind = str(event["type"])
    if kind not in accepted_types:
        raise PushRefused(
            422,
            "unsupported_event_type",
            f"event type {kind!r} is not taken here (accepted: {', '.join(accepted_types)})",
        )
    subject = event.get("subject")
    arrival = arrival_from_data(
        event.data,
        subject=subject if isinstance(subject, str) else None,
        via="push",
        notice=str(event["id"]),
    )
    return arrival, kind


def _json_data(data: Any) -> Any:
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8")
    if isinstance(data, str):
        return json.loads(data) if data.strip() else None
    return data
