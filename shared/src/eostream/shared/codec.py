"""Events on the wire: CloudEvents 1.0 in the Kafka binary content mode.

Attributes travel as ``ce_*`` headers, the data as JSON in the message value, and the message key
is the event's natural id. The mapping itself is the CloudEvents SDK's (``cloudevents.core``); this
module only says which event attribute goes where, and turns what comes back into our models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from eostream.shared.errors import InvalidEventError
from eostream.shared.events import Event, parse_event

TYPE_PREFIX = "io.eostream."
CONTENT_TYPE = "application/json"
_FORMAT = JSONFormat()


@dataclass(frozen=True)
class WireMessage:
    """One Kafka record as bytes: what the bus adapters send and receive."""

    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)


def encode(event: Event, *, source: str | None = None) -> WireMessage:
    """Encode an event as a CloudEvents Kafka binary-mode message keyed by its natural id."""
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(event.id),
        "source": f"/eostream/{source or event.source}",
        "type": TYPE_PREFIX + event.event_type,
        "time": event.time,
        "subject": event.key,
        "datacontenttype": CONTENT_TYPE,
        "dataschema": f"urn:eostream:{event.event_type}:v{event.schema_version}",
        "schemaversion": str(event.schema_version),
    }
    ce = CloudEvent(attributes, event.model_dump(mode="json"))
    message = ce_kafka.to_binary(ce, _FORMAT, key_mapper=lambda _: event.key)
    key = message.key.encode() if isinstance(message.key, str) else message.key
    return WireMessage(key=key, value=message.value, headers=dict(message.headers))


def decode(message: WireMessage) -> Event:
    """Decode and validate a binary-mode message; anything wrong raises InvalidEventError."""
    try:
        ce = ce_kafka.from_binary(
            ce_kafka.KafkaMessage(headers=message.headers, key=message.key, value=message.value),
            _FORMAT,
            CloudEvent,
        )
    except Exception as exc:  # the SDK raises several types for bad headers; all are poison
        raise InvalidEventError(f"not a CloudEvents binary-mode message: {exc}") from exc
    data = ce.get_data()
    if not isinstance(data, dict):
        raise InvalidEventError("the message value is not a JSON object")
    ce_type = ce.get_type()
    if not ce_type.startswith(TYPE_PREFIX):
        raise InvalidEventError(f"unknown CloudEvents type {ce_type!r}")
    payload_type = data.get("event_type")
    if payload_type != ce_type.removeprefix(TYPE_PREFIX):
        raise InvalidEventError(
            f"ce_type {ce_type!r} does not match the payload's event_type {payload_type!r}"
        )
    event = parse_event(data)
    if str(event.id) != ce.get_id():
        raise InvalidEventError(f"ce_id {ce.get_id()!r} does not match the payload's id {event.id}")
    return event


def header_text(headers: Mapping[str, bytes]) -> dict[str, str]:
    """Headers as text, for logs and dead-letter records."""
    return {k: v.decode("utf-8", errors="replace") for k, v in headers.items()}
