"""Pushed notifications: the signature check and the CloudEvent, both pure (no I/O).

Signature: Standard Webhooks (``eostream.shared.webhooks``): HMAC-SHA256 with the shared
secret over ``{webhook-id}.{webhook-timestamp}.{body}``, sent base64 in ``webhook-signature`` as
``v1,<signature>`` (several, space separated, during a key rotation). The timestamp must be
within the tolerance of now, so a captured request cannot be replayed later; within it, a replay
names an item already announced and changes nothing (the seen-set). The secret is the
credential: no separate API key (ADR 0016).

Event: a CloudEvent (HTTP binding, binary mode with ``ce-*`` headers or structured mode with
``application/cloudevents+json``) of an accepted type (EOEPCA resource registration's
``org.eoepca.resource-registration.resource.added`` by default) whose data is the STAC item or
a reference to it (``id``, ``collection``). In binary mode the data must name the item: the
``ce-*`` headers are outside the signature (:func:`parse`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from eostream.ingest.arrivals import Arrival, arrival_from_data
from eostream.ingest.errors import PushRefused
from eostream.shared import webhooks


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: float
) -> str:
    """The webhook id of a request signed with ``secret`` (:func:`eostream.shared.webhooks.
    verify`); raises :class:`PushRefused` (401) naming why it is not."""
    try:
        return webhooks.verify(secret, headers, body, now=now, tolerance=tolerance)
    except webhooks.SignatureError as exc:
        raise PushRefused(401, exc.code, exc.description) from None


def check_headers(headers: Mapping[str, str], *, now: float, tolerance: float) -> None:
    """Refuse (401) a request whose signature headers are missing or stale before its body is
    read (:func:`verify` checks the signature itself on the body)."""
    try:
        webhooks.check_headers(headers, now=now, tolerance=tolerance)
    except webhooks.SignatureError as exc:
        raise PushRefused(401, exc.code, exc.description) from None


def structured(headers: Mapping[str, str]) -> bool:
    """Whether ``cloudevents`` reads the request in structured mode (the whole event in the
    signed body): its own rule, so the two never disagree (a content-type of another case or
    ``application/cloudevents-batch+json`` with every ``ce-*`` header is binary mode to it)."""
    from cloudevents.v1.sdk.converters import is_structured

    return bool(is_structured(headers))


def parse(
    headers: Mapping[str, str], body: bytes, *, accepted_types: Collection[str]
) -> tuple[Arrival, str]:
    """The arrival a CloudEvent names, and its type. Raises :class:`PushRefused`: 400 when the
    request is not a CloudEvent, 422 when its type is not accepted or it names no item.

    The signature covers the body, not the headers: in binary mode the ``ce-*`` attributes are
    headers, so the item is taken from the data alone there (a ``ce-subject`` is not taken: a
    captured request re-sent with another subject must not name another item). In structured
    mode the attributes are in the body, and the subject may name the item."""
    from cloudevents.v1.exceptions import GenericException
    from cloudevents.v1.http import from_http

    try:
        event = from_http(dict(headers), body, data_unmarshaller=_json_data)
    # the library's own errors, and what it lets through from malformed attributes
    # ({"specversion": [1]}: TypeError) or data nested too deeply for json (RecursionError)
    except (GenericException, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise PushRefused(
            400,
            "bad_request",
            f"not a CloudEvent (HTTP binding, binary or structured mode): {exc}"[:500],
        ) from None
    except RecursionError:
        raise PushRefused(400, "bad_request", "the body is nested too deeply") from None
    kind = str(event["type"])
    if kind not in accepted_types:
        raise PushRefused(
            422,
            "unsupported_event_type",
            f"event type {kind!r} is not taken here (accepted: {', '.join(accepted_types)})",
        )
    subject = event.get("subject") if structured(headers) else None
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
