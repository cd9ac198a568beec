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

Options (``context.options["registry-bridge"]``): any :class:`BridgeSettings` field, e.g.
``reconcile_interval_seconds``, ``model_names``, ``gate``, ``holdout``, ``http_port``; the bus,
the store, MLflow and webhooks are the embedded ones and cannot be set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from eostream.registry_bridge.service import SERVICE, BridgeService, mlflow_client_defaults
from eostream.registry_bridge.settings import BridgeSettings
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


def embedded_settings(context: EmbeddedContext) -> BridgeSettings:
    """Settings of the embedded bridge: the context's MLflow and data folder plus the options."""
    options = context.settable_options(SERVICE, FIXED)
    overrides: dict[str, Any] = {
        "reconcile_interval_seconds": 5.0,
        **options,
        **context.fixed_settings(),  # the store is not built: the context's is handed in
        "mlflow_tracking_uri": context.mlflow_tracking_uri,
    }
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
        self.service = BridgeService(
            self.settings, bus=self._context.bus, store=self._context.store, webhooks=False
        )
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
