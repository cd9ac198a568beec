"""A request costs nothing until it is allowed: an ASGI middleware in front of the bridge's HTTP
app, run before FastAPI reads a body (FastAPI reads and parses a route's whole body before the
route's credential dependency runs).

- A write route (``POST /models/{name}/promote|rollback``) without a valid credential answers
  401 before one byte of its body is read (the same answer the route gives; the route still
  checks the role).
- A body whose declared Content-Length is over ``max_body_bytes`` answers 413 at once; one that
  declares none (chunked) or lies about it is cut off with 413 as soon as it passes the limit.

The answers do not ask to close the connection: uvicorn then discards the rest of a refused
body as it arrives (never keeping it), and the client, still sending, reads the answer instead
of a reset connection. The webhook route checks its signature headers before it reads the body
(:mod:`.webhook`).
Inference has the same guard (``eostream.inference.api.guard``) for its own routes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eostream.registry_bridge.auth import CHALLENGE, authenticate, presented_key
from eostream.registry_bridge.errors import NotAuthenticatedError
from eostream.registry_bridge.settings import Credential

#: the routes that take a promoter's credential and a body
WRITE_ROUTE = re.compile(r"^/models/[^/]+/(?:promote|rollback)/?$")


class _TooLarge(Exception):
    pass


class RequestGuard:
    """Checks credentials (write routes) and body size before the app sees a request."""

    def __init__(
        self, app: ASGIApp, *, credentials: Mapping[str, Credential], max_body_bytes: int
    ) -> None:
        self.app = app
        self._credentials = credentials
        self._max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "POST" and WRITE_ROUTE.match(scope["path"]):
            try:
                authenticate(
                    self._credentials,
                    presented_key(headers.get("x-api-key"), headers.get("authorization")),
                )
            except NotAuthenticatedError as exc:
                await _answer(send, 401, "unauthenticated", str(exc), challenge=True)
                return
        limit = self._max
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
                await _answer(send, 400, "bad_request", "the Content-Length header is invalid")
                return
            if int(declared) > limit:
                await _answer(send, 413, "too_large", _too_large(self._max))
                return
            limit = int(declared)  # a body longer than it said is cut off too
        received = 0
        exceeded = started = False

        async def guarded_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # the app's answer to a body cut off (FastAPI: 400): ours replaces it
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _answer(send, 413, "too_large", _too_large(self._max))


def _too_large(limit: int) -> str:
    return (
        f"the request body is larger than the {limit} bytes allowed (BRIDGE_MAX_BODY_BYTES); "
        "send a smaller one"
    )


async def _answer(
    send: Send, status: int, code: str, description: str, *, challenge: bool = False
) -> None:
    body = json.dumps({"code": code, "description": description}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if challenge:
        headers.append((b"www-authenticate", CHALLENGE.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
