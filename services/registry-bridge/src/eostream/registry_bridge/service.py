"""The long-running service around a built bridge: webhook + REST + ops server, reconcile loop,
worker, and the ModelVersionRegistered consumer (fast path). :func:`run` is the entrypoint that
builds the adapters (MLflow, object store, bus) from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from eostream.registry_bridge.api import ERRORS, models_router
from eostream.registry_bridge.bridge import Bridge, build_bridge
from eostream.registry_bridge.registry import build_registry
from eostream.registry_bridge.request_guard import RequestGuard
from eostream.registry_bridge.settings import BridgeSettings
from eostream.registry_bridge.webhook import webhook_router
from eostream.registry_bridge.worker import Worker
from eostream.shared import http_errors, topics
from eostream.shared.bus import Consumers, Delivery, build_bus
from eostream.shared.deployment import mlflow_client_defaults
from eostream.shared.events import Event, ModelVersionRegistered
from eostream.shared.ops import OpsServer, create_ops_app
from eostream.shared.redaction import redact_urls
from eostream.shared.storage import build_object_store

log = logging.getLogger(__name__)

SERVICE = "registry-bridge"
DRAIN_TIMEOUT_SECONDS = 45.0


def standalone_bridge(settings: BridgeSettings) -> Bridge:
    """The bridge on the adapters the settings name: MLflow, the object store, the bus (not
    started). For the standalone service and the CLI."""
    return build_bridge(
        settings,
        registry=build_registry(settings),
        store=build_object_store(settings),
        bus=build_bus(settings, service=SERVICE),
    )


class BridgeService:
    """The long-running bridge. ``start`` then ``stop`` (tests run it in-process).

    ``owns_bus``: the service starts and closes the bridge's bus; otherwise the bus belongs to
    the caller (the embedded runner shares one among all services). ``webhooks=False`` leaves out
    the MLflow webhook receiver and its registration (the embedded mode relies on the reconcile
    loop).
    """

    def __init__(
        self,
        settings: BridgeSettings,
        bridge: Bridge,
        *,
        owns_bus: bool = False,
        webhooks: bool = True,
    ) -> None:
        self.settings = settings
        self.webhooks = webhooks
        self._owns_bus = owns_bus
        self.bridge = bridge
        self.bus = bridge.bus
        self.worker = Worker(self.bridge, settings.model_names)
        self.consumers = Consumers(SERVICE, settings.consumers)
        self.consumers.add(
            settings.consumer_group,
            lambda: self.bus.consumer(
                [topics.MODELS_REGISTERED], settings.consumer_group, self._on_registered
            ),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.app = self.create_app()
        self.server = OpsServer(self.app, settings.http_host, settings.http_port)

    def readiness(self) -> tuple[bool, str]:
        if not self.worker.last_reconcile_ok:
            return False, "MLflow registry not reached yet (see logs)"
        ok, detail = self.consumers.readiness()
        if not ok:
            return False, f"not consuming {topics.MODELS_REGISTERED}: {detail}"
        return True, f"watching {', '.join(self.settings.model_names)}"

    def create_app(self) -> FastAPI:
        app = create_ops_app(SERVICE, self.readiness, self.consumers.liveness)
        http_errors.install(app, ERRORS)  # every error answers {"code", "description"}
        if self.webhooks:
            secret = self.settings.webhook_secret
            app.include_router(
                webhook_router(
                    secret.get_secret_value() if secret else None,
                    self.settings.webhook_tolerance_seconds,
                    self.worker.enqueue,
                )
            )
        app.include_router(models_router(self.bridge))  # writes need BRIDGE_API_KEYS (promoter)
        # before FastAPI reads a body: writes without a credential and oversized bodies refused
        app.add_middleware(
            RequestGuard,
            credentials=self.settings.api_keys,
            max_body_bytes=self.settings.max_body_bytes,
        )
        if not self.settings.api_keys:
            log.warning(
                "BRIDGE_API_KEYS is not set: the REST write routes (promote, rollback) "
                "answer 401; `eostream models promote` still works locally"
            )
        return app

    async def _on_registered(self, event: Event, delivery: Delivery) -> None:
        if not isinstance(event, ModelVersionRegistered):
            raise ValueError(f"unexpected {event.event_type} on {delivery.topic}")
        await self.worker.enqueue(event.name, event.version, "event")

    async def start(self) -> None:
        await asyncio.to_thread(self.bridge.store.check)
        if self._owns_bus:
            await self.bus.start()
        await self.bus.ensure_topics([topics.MODELS_REGISTERED, topics.MODELS_PROMOTED])
        await self.server.start()
        if self.webhooks:
            # in a thread: MLflow may take minutes to answer (retries, 30 s timeouts), and the
            # ops server (/livez) and the stop signals run on this loop meanwhile
            await asyncio.to_thread(self._register_webhook)
        self._tasks = [
            asyncio.create_task(self.worker.run(), name="bridge-worker"),
            asyncio.create_task(
                self.worker.reconcile_forever(self.settings.reconcile_interval_seconds),
                name="bridge-reconcile",
            ),
        ]
        self.consumers.start()
        log.info(
            "registry-bridge watching %s (MLflow %s)",
            ", ".join(self.settings.model_names),
            redact_urls(self.settings.mlflow_tracking_uri),
        )

    def _register_webhook(self) -> None:
        """Blocking: create or update this deployment's webhook in MLflow."""
        s = self.settings
        if not (s.webhook_url and s.webhook_secret):
            log.info("no webhook registered (BRIDGE_WEBHOOK_URL/SECRET unset): reconcile loop only")
            return
        try:
            hook = self.bridge.registry.ensure_webhook(
                s.webhook_url, s.webhook_secret.get_secret_value(), s.webhook_name
            )
            log.info(
                "MLflow webhook %s (%s) -> %s", s.webhook_name, hook, redact_urls(s.webhook_url)
            )
        except Exception as exc:  # the reconcile loop still covers everything
            log.warning(
                "could not register the MLflow webhook (%s); reconcile loop only",
                redact_urls(str(exc)),
            )

    async def wait(self) -> None:
        """Until the worker or the reconcile loop fails (the consumer restarts by itself)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()

    async def stop(self) -> None:
        """Stop taking work (consumer, reconcile loop), let the worker finish the version in
        hand, then stop the worker; queued versions are picked up again by the next reconcile."""
        await self.consumers.stop(timeout=DRAIN_TIMEOUT_SECONDS)
        working = [t for t in self._tasks if t.get_name() == "bridge-worker" and not t.done()]
        for task in self._tasks:
            if task not in working:
                task.cancel()
        if working and not await self.worker.drain(DRAIN_TIMEOUT_SECONDS):
            log.warning(
                "stopping with a version still in hand after %.0fs; the reconcile loop "
                "will handle it again",
                DRAIN_TIMEOUT_SECONDS,
            )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.server.stop()
        if self._owns_bus:
            await self.bus.close()


async def run(settings: BridgeSettings) -> None:
    from eostream.shared.runtime import install_stop_signals, preflight

    await preflight(settings)
    mlflow_client_defaults()
    service = BridgeService(settings, standalone_bridge(settings), owns_bus=True)
    stop = asyncio.Event()
    install_stop_signals(stop.set)
    await service.start()
    waiter = asyncio.create_task(service.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            waiter.result()
    finally:
        stopper.cancel()
        waiter.cancel()
        await service.stop()
