"""``create_app(settings, service)``: the REST API. The lifespan starts the service (model,
consumers) unless it runs already, and stops only a service it started."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import cast

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware

from eostream.inference import metrics
from eostream.inference.api import areas as area_routes
from eostream.inference.api import (
    classify,
    errors,
    jobs,
    models,
    ogc,
    processes,
    results,
    stac,
    subscriptions,
    tiles,
    vector,
    viewer,
)
from eostream.inference.api.guard import MULTIPART_SLACK, UPLOAD_PATH, RequestGuard
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.ops import ops_router

#: the methods the request metric names; any other is counted as "other" (a client's word)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(settings: InferenceSettings, service: InferenceService | None = None) -> FastAPI:
    """The API over ``service``; without one, over a service built from the settings alone
    (:func:`~eostream.inference.wiring.build_service`, which opens the results index)."""
    svc = service or build_service(settings)
    parts = processes.Parts.build(svc)  # OGC API - Processes: jobs, other models' sessions

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        owned = not svc.started
        await svc.start()
        await asyncio.to_thread(parts.runner.start)  # sweeps jobs nobody holds
        try:
            yield
        finally:
            parts.runner.stop()
            parts.cache.clear()
            if owned:
                await svc.stop()

    app = FastAPI(
        title="eostream inference",
        version="0.1.0",
        description="Whole-scene land-cover classification of Sentinel-2 scenes, and its results.",
        lifespan=lifespan,
    )
    app.state.service = svc
    app.state.ogc = parts
    errors.install(app)
    ogc.install(app)
    invalid = cast(
        Callable[[Request, Exception], Awaitable[Response]],
        app.exception_handlers[RequestValidationError],
    )

    async def stac_invalid(request: Request, exc: Exception) -> Response:
        """The STAC API answers a bad parameter with 400 (the same error body)."""
        response = await invalid(request, exc)
        if request.url.path == "/stac" or request.url.path.startswith("/stac/"):
            response.status_code = 400
        return response

    app.add_exception_handler(RequestValidationError, stac_invalid)

    @app.middleware("http")
    async def timing(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()

        def observe(status: int) -> None:
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            # the method is the client's word: any other than HTTP's own is one series, "other"
            method = request.method if request.method in HTTP_METHODS else "other"
            metrics.REQUEST_DURATION.labels(template, method, str(status)).observe(
                time.perf_counter() - started
            )

        try:
            response = await call_next(request)
        except Exception:  # no handler answers it: the server sends a 500 (a cancel is none)
            observe(500)
            raise
        observe(response.status_code)
        return response

    def body_limit(path: str) -> int:
        if path == UPLOAD_PATH:
            return settings.max_upload_bytes + MULTIPART_SLACK
        return settings.max_request_body_bytes

    # outermost of the app's middleware: runs before any body is read or parsed
    app.add_middleware(RequestGuard, api_key=settings.api_key.get_secret_value(), limit=body_limit)
    if settings.cors_origins:  # reads only: browsers may GET from these origins
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET"]
        )
    app.include_router(ops_router("inference", svc.readiness, svc.liveness))
    for router in (
        area_routes.router,  # before results: /results/{scene_id} would take /results/aggregate
        results.router,
        stac.router,
        models.router,
        classify.router,
        processes.router,
        jobs.router,
        subscriptions.router,
        vector.router,
        tiles.router,
    ):
        app.include_router(router)
    viewer.install(app, settings.viewer_dir)  # the map page at / for browsers
    return app
