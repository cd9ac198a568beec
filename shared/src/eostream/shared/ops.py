"""The operators' HTTP surface every service has: liveness, readiness and /metrics.

Workers (ingest, trainer, registry-bridge) run it beside their consumers; the inference API mounts
the same router into its own app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eostream.shared import metrics
from eostream.shared.errors import ConfigError

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], tuple[bool, str]]


class _InThread:
    """A readiness check run in a worker thread, one run at a time: a check may block (the
    inference service pings its results database, up to the pool's timeout), and on the event
    loop it would stop every consumer, the Kafka heartbeats and /livez with it. Probes that
    arrive while a check runs wait for that run's answer, so a hung database ties up one thread
    however often the orchestrator asks. A check must therefore be safe to call from a thread."""

    def __init__(self, check: ReadinessCheck) -> None:
        self._check = check
        self._running: asyncio.Future[tuple[bool, str]] | None = None

    async def __call__(self) -> tuple[bool, str]:
        running = self._running
        loop = asyncio.get_running_loop()
        if running is None or running.done() or running.get_loop() is not loop:
            running = self._running = asyncio.ensure_future(asyncio.to_thread(self._check))
        # shielded: a probe that gives up (client gone) leaves the run to the others
        return await asyncio.shield(running)


def ops_router(
    service: str, readiness: ReadinessCheck, liveness: ReadinessCheck | None = None
) -> APIRouter:
    """``liveness``: what must hold for the process to be worth keeping (no stalled or
    crash-looping consumer); failing it (503) asks the orchestrator for a restart. It runs on the
    event loop and must not block. ``readiness`` may block: it runs in a worker thread."""
    metrics.announce(service)
    router = APIRouter(tags=["operations"])
    check_readiness = _InThread(readiness)

    @router.get(
        "/livez",
        summary="Liveness: the process answers and no consumer is stuck",
        responses={503: {"description": "not alive: restart the process (same body)"}},
    )
    async def livez(response: Response) -> dict[str, str]:
        # on the loop: liveness reads the consumers' progress and never blocks
        ok, detail = liveness() if liveness is not None else (True, "answering")
        if not ok:
            response.status_code = 503
        return {"status": "ok" if ok else "unavailable", "service": service, "detail": detail}

    @router.get(
        "/readyz",
        summary="Readiness: the service can do its work now",
        responses={503: {"description": "not ready yet (same body, with the reason)"}},
    )
    async def readyz(response: Response) -> dict[str, str]:
        ok, detail = await check_readiness()
        if not ok:
            response.status_code = 503
        return {"status": "ok" if ok else "unavailable", "service": service, "detail": detail}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def create_ops_app(
    service: str, readiness: ReadinessCheck, liveness: ReadinessCheck | None = None
) -> FastAPI:
    app = FastAPI(title=f"eostream {service} (operations)", docs_url=None, redoc_url=None)
    app.include_router(ops_router(service, readiness, liveness))
    return app


class OpsServer:
    """Runs an ASGI app with uvicorn inside the current event loop."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        self.host, self.port = host, port
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _bind(self) -> list[socket.socket]:
        """Listening sockets on every address the host names, as asyncio's ``create_server``
        binds them (``localhost``: ``::1`` and ``127.0.0.1``; an empty host: every interface;
        IPv6 ones IPv6-only), or ConfigError naming the address (one line for the user)."""
        try:
            found = socket.getaddrinfo(
                self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {exc}") from None
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(found):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror}): choose another "
                "port or stop what holds it"
            ) from None
        return sockets

    async def start(self) -> None:
        # The service's own loop owns SIGTERM/SIGINT (graceful drain), not uvicorn.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        # bound here, not by uvicorn: its answer to a port it cannot bind is sys.exit, which
        # escapes the event loop as a traceback
        self._task = asyncio.create_task(self._server.serve(sockets=self._bind()))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)
        log.info("operations endpoint on %s (/livez /readyz /metrics)", self.url)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
