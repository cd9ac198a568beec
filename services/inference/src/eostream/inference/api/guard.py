"""A request costs nothing until it is allowed: an ASGI middleware that runs before FastAPI
reads a body (FastAPI spools a multipart upload to disk while it parses the form).

Writing requests (POST under ``/classify/``, ``/processes/`` and ``/subscriptions``) without a
valid API key are answered 401 before one byte of their body is read; a body whose declared
Content-Length is over the route's limit is answered 413 at once; one that lies about its length
(or sends none) is cut off with 413 as soon as it passes the limit while streaming.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eostream.inference.api.deps import UNAUTHORIZED, key_is_valid

#: Multipart framing around an upload's bytes (boundaries, part headers, the other fields).
MULTIPART_SLACK = 65_536
UPLOAD_PATH = "/classify/upload"
PROTECTED = ("/classify/", "/processes/", "/subscriptions")


class _TooLarge(Exception):
    pass


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
        limit = allowed = self._limit(path)
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
                await _answer(send, 400, "bad_request", "the Content-Length header is invalid")
                return
            if int(declared) > limit:
                await _answer(send, 413, "too_large", _too_large(limit))
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
            if exceeded:  # the app's answer to a body cut off: ours replaces it
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
            await _answer(send, 413, "too_large", _too_large(allowed))


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
