"""Helpers shared by several packages' tests: for the request-body limits
(``eostream.shared.body_limit``, used by the bridge's and inference's guards and ingest's push),
what the app read of a body and a body sent chunked with no length declared; for the dead
letters (``eostream.shared.deadletters``, used by ``eostream dlq``) and the bus contract, a scene
event and the dead letter a service would write of a message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from eostream.shared.bus.base import Delivery, dead_letter_message
from eostream.shared.codec import WireMessage
from eostream.shared.events import SceneDiscovered


class BodyRead:
    """Between the HTTP server and the app (``app``, given now or set later): counts the
    request body bytes the app pulled (its ``receive`` calls), so a test can tell a body refused
    unread from one read and refused."""

    def __init__(self, app: Any = None) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            if message.get("type") == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


class StreamedBody:
    """A request body sent chunked (no length declared) of ``total`` bytes; ``sent`` says how
    many went out."""

    def __init__(self, total: int, chunk: int = 1 << 14) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            n = min(self.chunk, self.total - self.sent)
            self.sent += n
            yield b"x" * n


def scene(item_id: str, **extra: object) -> SceneDiscovered:
    """A SceneDiscovered of a made-up item (``extra`` overrides its fields)."""
    fields: dict[str, object] = {
        "item_id": item_id,
        "item_href": f"https://example.test/items/{item_id}",
        "datetime": datetime(2024, 5, 1, 10, 30, tzinfo=UTC),
        "processing_level": "L2A",
        "bands": ("B02", "B03", "B04"),
        "source_name": "test",
    }
    fields.update(extra)
    return SceneDiscovered.model_validate(fields)


def letter_of(
    message: WireMessage,
    *,
    topic: str = "eostream.scenes.discovered",
    offset: int | None = 7,
    reason: str = "bad",
    service: str = "inference",
) -> WireMessage:
    """The dead letter ``service`` writes of ``message`` read from ``topic`` at ``offset``."""
    delivery = Delivery(topic, None if offset is None else 0, offset, None)
    return dead_letter_message(
        message,
        delivery,
        reason=reason,
        error_type="InvalidEventError",
        service=service,
        attempts=1,
    )
