"""Helpers for the tests of the request-body limits (``eostream.shared.body_limit``, used by the
bridge's and inference's guards and ingest's push): what the app read of a body, and a body sent
chunked with no length declared."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


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
