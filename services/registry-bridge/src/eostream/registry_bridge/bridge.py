"""The bridge: the async face of the gate, promotions, rollbacks and the champion sync.

Each operation is one blocking transaction (:mod:`.gating`, :mod:`.promotion`, :mod:`.guard`)
run in one worker thread, under one lock, so a webhook, the reconcile loop, the event consumer
and a manual promotion never interleave. The transaction puts ``ModelPromoted`` on the bus
through the event loop and waits for it (:class:`LoopPublisher`), so its order (tags, publish,
``live_version``, audit) is the same as if it ran on the loop. All state is in registry tags and
aliases and in the models bucket, so a restarted bridge carries on where it stopped.

:func:`build_bridge` wires one from its adapters; the entrypoints (service.py, embedded.py,
cli.py) build the adapters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from eostream.registry_bridge import metrics
from eostream.registry_bridge.audit import AuditLog, Via
from eostream.registry_bridge.catalog import ModelsCatalog
from eostream.registry_bridge.gatekeeper import Gatekeeper
from eostream.registry_bridge.gating import Gating
from eostream.registry_bridge.guard import ChampionGuard
from eostream.registry_bridge.policy import Thresholds
from eostream.registry_bridge.port import ModelRegistry
from eostream.registry_bridge.promotion import BRIDGE, Outcome, Promoter
from eostream.registry_bridge.publishers import build_publisher
from eostream.registry_bridge.settings import BridgeSettings
from eostream.registry_bridge.shipping import Shipper
from eostream.shared import topics
from eostream.shared.bus import Bus
from eostream.shared.events import ModelPromoted
from eostream.shared.storage import ObjectStore

__all__ = ["BRIDGE", "Bridge", "LoopPublisher", "Outcome", "build_bridge"]

T = TypeVar("T")


async def in_thread_to_the_end(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``fn`` in a worker thread, awaited until the thread returns even when the awaiting task
    is cancelled: a thread cannot be stopped, so a caller holding the bridge's lock keeps it
    until the transaction really ended (no second one runs beside it). A cancellation is
    raised once the thread is done."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait((future,))  # unlike await, a cancelled wait leaves the future be
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller hears
        raise asyncio.CancelledError
    return future.result()


class LoopPublisher:
    """Publishes ``ModelPromoted`` from a worker thread on the event loop that owns the bus, and
    waits until the bus took it (or raised)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, event: ModelPromoted) -> None:
        loop = self.loop
        if loop is None:
            raise RuntimeError("the bridge publishes only inside one of its operations")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("a bridge transaction must run in a worker thread, not the loop")
        asyncio.run_coroutine_threadsafe(
            self.bus.publish(topics.MODELS_PROMOTED, event), loop
        ).result()


class Bridge:
    def __init__(
        self,
        settings: BridgeSettings,
        registry: ModelRegistry,
        bus: Bus,
        *,
        shipper: Shipper,
        audit: AuditLog,
        promoter: Promoter,
        gating: Gating,
        guard: ChampionGuard,
        publisher: LoopPublisher,
        catalog: ModelsCatalog | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.bus = bus
        self.shipper = shipper
        self.audit = audit
        self.promoter = promoter
        self.gating = gating
        self.guard = guard
        self._publisher = publisher
        self.catalog = catalog
        self.lock = asyncio.Lock()

    @property
    def store(self) -> ObjectStore:
        return self.shipper.store

    async def _transaction(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run one operation in one worker thread, under the lock; then bring the models
        catalogue in step with the model (every operation's first argument is its name)."""
        async with self.lock:
            self._publisher.loop = asyncio.get_running_loop()
            try:
                return await in_thread_to_the_end(fn, *args, **kwargs)
            finally:
                if self.catalog is not None and args and isinstance(args[0], str):
                    await in_thread_to_the_end(self.catalog.refresh, args[0])

    async def handle_version(self, name: str, version: str, source: str = "manual") -> Outcome:
        """Gate a new version; promote it when it passes (and auto_promote is on)."""
        metrics.VERSIONS_SEEN.labels(source).inc()
        return await self._transaction(
            self.gating.handle, name, version, self.settings.auto_promote
        )

    async def promote(
        self,
        name: str,
        version: str,
        *,
        by: str,
        reason: str,
        force: bool = False,
        via: Via = "cli",
    ) -> ModelPromoted:
        """Manual promotion. A version that failed the gate needs ``force`` (an override, kept in
        the audit log and in ``eostream.override_*`` tags); a refused one never ships. ``by`` is
        who asks: the REST credential's name, or the operator of the CLI."""
        metrics.VERSIONS_SEEN.labels("manual").inc()
        return await self._transaction(
            self.promoter.promote_manually,
            name,
            version,
            by=by,
            reason=reason,
            force=force,
            via=via,
            gate_first=self.gating.verdict_first,
        )

    async def rollback(self, name: str, *, by: str, reason: str, via: Via = "cli") -> ModelPromoted:
        """Make the champion before the current one live again (if it may still be champion:
        the ``previous_champion`` tag is registry state anyone with registry access can write)."""
        return await self._transaction(self.promoter.rollback, name, by=by, reason=reason, via=via)

    async def sync_champion(self, name: str) -> ModelPromoted | None:
        """React to a champion alias moved outside the bridge (MLflow UI/API), or a lost publish.

        The alias guard: a version that may not be champion (gate not passed, and no force
        promotion on record in the audit log) is neither shipped nor announced; the alias goes
        back to the version last announced. A passing version is shipped and announced.
        """
        return await self._transaction(self.guard.sync, name)

    async def announce_current_champion(self, name: str) -> ModelPromoted | None:
        """Announce again the champion a previous run shipped and announced, on this bridge's bus.

        For buses that do not keep their log across runs (the embedded in-process bus): without
        it, inference started in the same process would not know the live model. Does nothing
        when there is no champion, when the champion was never announced (``sync_champion``, in
        the reconcile loop, ships and announces it), or when this bridge already announced it on
        its bus, so calling it again is harmless. Nothing is shipped again while the models bucket
        holds the shipment; the event carries the champion's recorded promoter and reason.
        """
        return await self._transaction(self.guard.announce_current, name)


def build_bridge(
    settings: BridgeSettings, *, registry: ModelRegistry, store: ObjectStore, bus: Bus
) -> Bridge:
    """The bridge on its adapters: a model registry, the models bucket's store and a bus (the
    caller starts and closes the bus)."""
    attempts, backoff = settings.retry_attempts, settings.retry_backoff_seconds
    backoff_max = settings.retry_backoff_max_seconds
    shipper = Shipper(
        store, settings.models_prefix, attempts=attempts, backoff=backoff, backoff_max=backoff_max
    )
    audit = AuditLog(
        store, settings.audit_prefix, attempts=attempts, backoff=backoff, backoff_max=backoff_max
    )
    gate = Gatekeeper(settings, registry, shipper)
    publisher = LoopPublisher(bus)
    promoter = Promoter(registry, gate, shipper, audit, publisher)
    gating = Gating(registry, gate, promoter, Thresholds.of(settings.gate))
    return Bridge(
        settings,
        registry,
        bus,
        shipper=shipper,
        audit=audit,
        promoter=promoter,
        gating=gating,
        guard=ChampionGuard(registry, promoter),
        publisher=publisher,
        catalog=ModelsCatalog(
            registry,
            shipper,
            build_publisher(settings.catalog),
            settings.catalog.collection,
            audit,
        ),
    )
