"""The registry-bridge component of the embedded mode (``eostream up`` / ``eostream demo``).

The bridge on the shared in-process bus and the shared local object store, against the embedded
MLflow (``context.mlflow_tracking_uri``; the demo's MLflow server, or a sqlite URI). It runs the
reconcile loop (its only registry source: no webhooks here), the worker and the
``ModelVersionRegistered`` consumer, and serves its REST API (``/models/...``, ``/livez``,
``/readyz``, ``/metrics``) on a free port of ``context.http_host``.

The in-process bus forgets everything when the process ends, while MLflow and the models bucket
persist in the embedded home. So at start the component re-announces the champion an earlier run
shipped (:meth:`RegistryBridgeComponent.announce_current_champion`): inference in the same process
then loads it without anything being gated or shipped again.

Every shipped model is published to a static STAC catalogue,
``<home>/registry-bridge/stac/catalog.json`` (collection ``eostream-models``; the ``catalog``
option, e.g. ``{"stac_api_url": ...}``, publishes elsewhere).

The REST write routes take a credential: the ``api_keys`` option or ``BRIDGE_API_KEYS`` if given,
else one promoter credential named ``operator`` whose key is generated on first start and kept in
``<home>/registry-bridge/api-key`` (owner-only), so it is stable across runs.

Options (``context.options["registry-bridge"]``): any :class:`BridgeSettings` field, e.g.
``reconcile_interval_seconds``, ``model_names``, ``gate``, ``holdout``, ``http_port``; the bus,
the store, MLflow and webhooks are the embedded ones and cannot be set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eostream.registry_bridge.bridge import build_bridge
from eostream.registry_bridge.registry import build_registry
from eostream.registry_bridge.service import SERVICE, BridgeService
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared.deployment import mlflow_client_defaults
from eostream.shared.embedded import EmbeddedContext
from eostream.shared.events import ModelPromoted
from eostream.shared.settings import load_settings

log = logging.getLogger(__name__)

#: Settings the embedded mode decides; options naming them are refused.
FIXED = frozenset(
    (
        "bus",
        "kafka",
        "store",
        "s3",
        "local_store_root",
        "bucket",
        "mlflow_tracking_uri",
        "webhook_secret",
        "webhook_url",
        "data_dir",
    )
)


KEY_FILE = "api-key"
CATALOG_DIR = "stac"  # <home>/registry-bridge/stac/catalog.json: the models catalogue
OPERATOR = "operator"


def operator_key(context: EmbeddedContext) -> str:
    """The embedded operator's API key, kept under the home (generated on first use)."""
    path: Path = context.home / SERVICE / KEY_FILE
    if path.is_file():
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    log.info("registry-bridge: generated the %r promoter API key in %s", OPERATOR, path)
    return key


def embedded_settings(context: EmbeddedContext) -> BridgeSettings:
    """Settings of the embedded bridge: the context's MLflow and data folder plus the options."""
    options = context.settable_options(SERVICE, FIXED)
    overrides: dict[str, Any] = {
        "reconcile_interval_seconds": 5.0,
        **options,
        **context.fixed_settings(),  # the store is not built: the context's is handed in
        "mlflow_tracking_uri": context.mlflow_tracking_uri,
    }
    if "catalog" not in options:  # the models catalogue: a static one under the home
        overrides["catalog"] = {"static_dir": context.home / SERVICE / CATALOG_DIR}
    if "api_keys" not in options and not os.environ.get("BRIDGE_API_KEYS", "").strip():
        overrides["api_keys"] = {OPERATOR: {"key": operator_key(context), "role": "promoter"}}
    return load_settings(BridgeSettings, **overrides)


class RegistryBridgeComponent:
    name = SERVICE

    def __init__(self, context: EmbeddedContext) -> None:
        self._context = context
        self.settings = embedded_settings(context)
        self.service: BridgeService | None = None
        self._retry: asyncio.Task[None] | None = None

    @property
    def urls(self) -> Mapping[str, str]:
        if self.service is None:
            return {}
        return {"REST API": self.service.server.url}

    async def start(self) -> None:
        mlflow_client_defaults()
        bridge = build_bridge(
            self.settings,
            registry=build_registry(self.settings),
            store=self._context.store,
            bus=self._context.bus,
        )
        self.service = BridgeService(self.settings, bridge, webhooks=False)
        await self.service.start()
        try:
            await self.announce_current_champion()
        except Exception as exc:  # MLflow not answering yet: keep trying in the background
            log.warning("could not re-announce the champion yet (%s); retrying", exc)
            self._retry = asyncio.create_task(
                self._announce_until_done(), name="bridge-announce-champion"
            )

    async def announce_current_champion(self) -> list[ModelPromoted]:
        """Publish ``ModelPromoted`` on the context's bus for each watched model's champion that
        an earlier run shipped and announced (the in-process bus does not keep it across runs).

        Idempotent: a champion this component already announced (or promoted) on this bus is not
        announced again, and nothing is shipped again while the models bucket holds it. A
        champion never announced is left to the reconcile loop, which ships and announces it.
        """
        if self.service is None:
            raise RuntimeError("registry-bridge component not started")
        events = []
        for name in self.settings.model_names:
            event = await self.service.bridge.announce_current_champion(name)
            if event is not None:
                events.append(event)
        return events

    async def _announce_until_done(self) -> None:
        delay = self.settings.reconcile_interval_seconds
        while True:
            await asyncio.sleep(delay)
            try:
                await self.announce_current_champion()
                return
            except Exception as exc:
                delay = min(delay * 2, 300.0)
                log.warning("re-announcing the champion failed (%s); next try in %.0fs", exc, delay)

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
        if self.service is not None:
            await self.service.stop()
            self.service = None


def component(context: EmbeddedContext) -> RegistryBridgeComponent:
    """Entry point of the ``eostream.components`` group."""
    return RegistryBridgeComponent(context)
