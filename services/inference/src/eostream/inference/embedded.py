"""The inference component of the embedded mode (``eostream up`` / ``eostream demo``).

The service on the shared in-process bus and the shared local object store, with its results
index in sqlite under ``<home>/inference/results.sqlite``. It consumes ``ModelPromoted`` and
``SceneDiscovered``, publishes ``SceneClassified`` and serves its REST API (``/results``,
``/stac``, ``/docs``, ...) on a free port of ``context.http_host``.

A scene announced before any model is live waits on the bus: the scenes consumer starts only
once a model is live (``defer_scenes_until_model``), so nothing is dead-lettered for want of a
model. Across restarts the results (index and files in the store) stay, and the last live model
is reloaded from the index at start.

The API key of the writing endpoints is the ``api_key`` option if given, else one generated on
first start and kept in ``<home>/inference/api-key`` (owner-only), so it is stable across runs.

Options (``context.options["inference"]``): any :class:`InferenceSettings` field, e.g.
``api_key``, ``stride``, ``intra_op_threads``, ``http_port``; the bus, the store, the results
database and the data folder are the embedded ones and cannot be set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from eostream.inference.api.app import create_app
from eostream.inference.service import SERVICE, InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.embedded import EmbeddedContext
from eostream.shared.ops import OpsServer
from eostream.shared.settings import load_settings

log = logging.getLogger(__name__)

#: Settings the embedded mode decides; options naming them are refused.
FIXED = frozenset(
    ("bus", "kafka", "store", "s3", "local_store_root", "bucket", "results_db", "data_dir")
)
KEY_FILE = "api-key"


def state_dir(context: EmbeddedContext) -> Path:
    return context.home / SERVICE


def api_key(context: EmbeddedContext) -> SecretStr:
    """The ``api_key`` option, else the key kept under the home (generated on first use)."""
    given = context.options_for(SERVICE).get("api_key")
    if given:
        return given if isinstance(given, SecretStr) else SecretStr(str(given))
    path = state_dir(context) / KEY_FILE
    if path.is_file():
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            return SecretStr(kept)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    log.info("inference: generated an API key for the writing endpoints in %s", path)
    return SecretStr(key)


def embedded_settings(context: EmbeddedContext) -> InferenceSettings:
    """Settings of the embedded service: the context's home and data folder plus the options."""
    options = context.settable_options(SERVICE, FIXED)
    home = state_dir(context)
    home.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {
        "defer_scenes_until_model": True,
        # the demo's only scene is the 29RKH tile downsampled to 100 m: classify it at its own
        # resolution, marked coarse, rather than refuse it (option allow_coarse_scenes=False)
        "allow_coarse_scenes": True,
        **options,
        **context.fixed_settings(),  # the store is not built: the context's is handed in
        "api_key": api_key(context),
        "results_db": f"sqlite:///{home / 'results.sqlite'}",
    }
    return load_settings(InferenceSettings, **overrides)


class InferenceComponent:
    name = SERVICE

    def __init__(self, context: EmbeddedContext) -> None:
        self._context = context
        self.settings = embedded_settings(context)
        self.service: InferenceService | None = None
        self._server: OpsServer | None = None

    @property
    def urls(self) -> Mapping[str, str]:
        if self._server is None:
            return {}
        return {"REST API": self._server.url}

    async def start(self) -> None:
        self.service = await asyncio.to_thread(
            build_service, self.settings, bus=self._context.bus, store=self._context.store
        )
        await self.service.start()  # before the app's lifespan, so the component owns it
        try:
            self._server = OpsServer(
                create_app(self.settings, self.service),
                self.settings.http_host,
                self.settings.http_port,
            )
            await self._server.start()
        except BaseException:
            await self.service.stop()
            self.service = None
            raise
        log.info("inference: REST API on %s (docs at /docs)", self._server.url)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self.service is not None:
            await self.service.stop()  # finishes the scene in flight; the bus is the system's
            self.service = None


def component(context: EmbeddedContext) -> InferenceComponent:
    """Entry point of the ``eostream.components`` group."""
    return InferenceComponent(context)
