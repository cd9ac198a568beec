"""The map page at the service root: a browser asking ``/`` for HTML gets the viewer (MapLibre GL,
installed by ``npm ci`` into ``viewer/node_modules``; nothing from a CDN); any other client gets
the JSON landing page as before. The page's own files are under ``/viewer/static``, MapLibre's
under ``/viewer/maplibre``; the page reads the JSON APIs (/results, /tiles)."""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

#: services/inference/viewer, beside the package's src/ folder (a workspace or image checkout).
DEFAULT_DIR = Path(__file__).resolve().parents[4] / "viewer"
PAGE = "static/index.html"
MAPLIBRE = "node_modules/maplibre-gl/dist"

mimetypes.add_type("text/javascript", ".mjs")  # module scripts need a JavaScript type


def wants_html(scope: Scope) -> bool:
    """A browser's navigation: ``text/html`` accepted before any JSON type (or ``?f=html``)."""
    query = scope.get("query_string", b"").decode("latin-1")
    if "f=html" in query.split("&"):
        return True
    if "f=json" in query.split("&"):
        return False
    accept = ""
    for name, value in scope.get("headers", []):
        if name == b"accept":
            accept = value.decode("latin-1").lower()
    html, json = accept.find("text/html"), accept.find("json")
    return html >= 0 and (json < 0 or html < json)


class RootPage:
    """Answers a browser's ``GET /`` with the page; everything else goes to the app."""

    def __init__(self, app: ASGIApp, page: Path) -> None:
        self.app = app
        self._page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/"
            and scope["method"] in ("GET", "HEAD")
            and wants_html(scope)
        ):
            response = FileResponse(self._page, media_type="text/html")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install(app: FastAPI, folder: Path | None) -> None:
    """Serve the viewer from ``folder`` (default :data:`DEFAULT_DIR`); without its page or
    MapLibre (``npm ci`` not run) the service runs without it and says so in its log."""
    root = folder or DEFAULT_DIR
    page, maplibre = root / PAGE, root / MAPLIBRE
    if not page.is_file() or not (maplibre / "maplibre-gl.mjs").is_file():
        log.warning(
            "no map viewer: %s or %s is missing (run `make install`, which runs npm ci there)",
            page,
            maplibre,
        )
        return
    app.mount("/viewer/static", StaticFiles(directory=root / "static"), name="viewer-static")
    app.mount("/viewer/maplibre", StaticFiles(directory=maplibre), name="viewer-maplibre")
    app.add_middleware(RootPage, page=page)
