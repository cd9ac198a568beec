"""A request costs nothing until it is allowed: an ASGI middleware that runs before FastAPI
reads a body (FastAPI spools a multipart upload to disk while it parses the form).

Writing requests (POST under ``/classify/``, ``/processes/`` and ``/subscriptions``) without a
valid API key are answered 401 before one byte of their body is read; a body whose declared
Content-Length is over the route's limit is answered 413 at once; one that lies about its length
(or sends none) is cut off with 413 as soon as it passes the limit while streaming
(``eostream.shared.body_limit``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from eostream.inference.api.deps import UNAUTHORIZED, key_is_valid
from eostream.shared.body_limit import run_bounded

#: Multipart framing around an upload's bytes (boundaries, part headers, the other fields).
MULTIPART_SLACK = 65_536
UPLOAD_PATH = "/classify/upload"
PROTECTED = ("/classify/", "/processes/", "/subscriptions")


class RequestGuard:
    """Checks credentials and size before the app sees a request.

    ``limit`` gives the body limit in bytes for a path; ``api_key`` the expected key.
    """

    def __init__(self, app: ASGIApp, *, api_key: str, limit: Callable[[str], int]) -> None:
        self.app = app
        self._api_key = api_key
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        if scope["method"] == "POST" and path.startswith(PROTECTED):
            if not key_is_valid(
                headers.get("x-api-key"), headers.get("authorization"), self._api_key
            ):
                await _answer(send, 401, "unauthorized", UNAUTHORIZED, bearer=True)
                return
        limit = self._limit(path)

        async def refuse(status: int, code: str, description: str) -> None:
            await _answer(send, status, code, description)

        await run_bounded(
            self.app, scope, receive, send, limit=limit, refuse=refuse, too_large=_too_large(limit)
        )


def _too_large(limit: int) -> str:
    return f"the request body is larger than the {limit} bytes allowed"


async def _answer(
    send: Send, status: int, code: str, description: str, bearer: bool = False
) -> None:
    body = json.dumps({"code": code, "description": description}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
