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
The size limit is ``eostream.shared.body_limit``, which inference's guard
(``eostream.inference.api.guard``) uses too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from eostream.registry_bridge.auth import CHALLENGE, authenticate, presented_key
from eostream.registry_bridge.errors import NotAuthenticatedError
from eostream.registry_bridge.settings import Credential
from eostream.shared.body_limit import run_bounded

#: the routes that take a promoter's credential and a body
WRITE_ROUTE = re.compile(r"^/models/[^/]+/(?:promote|rollback)/?$")


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

        async def refuse(status: int, code: str, description: str) -> None:
            await _answer(send, status, code, description)

        await run_bounded(
            self.app,
            scope,
            receive,
            send,
            limit=self._max,
            refuse=refuse,
            too_large=_too_large(self._max),
        )


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
