"""A request body bounded before an app reads it (ASGI), for the services' request guards
(inference's ``api.guard``, the registry-bridge's ``request_guard``): a declared Content-Length
over the limit is refused at once; a body that declares none (chunked) or lies about its length
is cut off as soon as it passes the limit while it streams, and the app's own answer to the cut
(FastAPI: 400) is replaced by the refusal. Each service answers in its own words (``refuse``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: ``refuse(status, code, description)``: the service's error answer
Refuse = Callable[[int, str, str], Awaitable[None]]


class _TooLarge(Exception):
    pass


def valid_length(declared: str) -> bool:
    """A Content-Length of ASCII digits, and few (``str.isdigit`` takes "²", which ``int()``
    refuses, as it does 5,000 digits)."""
    return declared.isascii() and declared.isdigit() and len(declared) <= 18


async def run_bounded(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    limit: int,
    refuse: Refuse,
    too_large: str,
) -> None:
    """Run ``app`` on an HTTP request whose body may be at most ``limit`` bytes; past it (or an
    invalid Content-Length) ``refuse`` answers 413 ``too_large`` (400)."""
    declared = Headers(scope=scope).get("content-length")
    cap = limit
    if declared is not None:
        if not valid_length(declared):
            await refuse(400, "bad_request", "the Content-Length header is invalid")
            return
        if int(declared) > limit:
            await refuse(413, "too_large", too_large)
            return
        cap = int(declared)  # a body longer than it said is cut off too
    received = 0
    exceeded = started = False

    async def guarded_receive() -> Message:
        nonlocal received, exceeded
        if exceeded:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
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
        await app(scope, guarded_receive, guarded_send)
    except Exception:
        if not exceeded:
            raise
    if exceeded and not started:
        await refuse(413, "too_large", too_large)
