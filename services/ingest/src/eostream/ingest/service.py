"""Wiring: the entrypoint picks the adapters, a builder makes the service from them.

One shape, as in every eostream service: :func:`from_settings` picks the adapters the settings
name (Kafka or in-process bus; sqlite or PostgreSQL state and leader lock; STAC API or static
sources) and returns them as :class:`IngestAdapters`; :func:`build_ingest` takes them as keyword
arguments and builds the service. Constructors take their adapters and never build one. Only the
entrypoints call :func:`from_settings`: :func:`serve` (``eostream ingest run``), ``cli.py`` and
``embedded.py`` (which hands in the embedded mode's shared bus).

:class:`IngestRunner` is what runs in a service (and in the embedded mode): while this replica
holds the state's leader lock, the watcher polls and a supervised consumer takes the operators'
replay requests (``eostream.ingest.replay``); otherwise it stands by (see ``leader``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eostream.ingest.api import PUSH_PATH, create_app
from eostream.ingest.arrivals import Arrivals
from eostream.ingest.labelwatch import LabelWatcher
from eostream.ingest.leader import FileLeaderLock, LeaderLock, Leadership
from eostream.ingest.settings import IngestSettings, StacApiSource
from eostream.ingest.sources import StacApiItemSource, StaticItemSource
from eostream.ingest.state import SqliteStateStore, StateStore
from eostream.ingest.watcher import SERVICE, WatchedSource, Watcher
from eostream.shared.bus import Bus, Consumers, Delivery, build_bus
from eostream.shared.errors import ConfigError, InvalidEventError
from eostream.shared.events import Event, ItemReplayRequested
from eostream.shared.label_catalog import LabelCatalog, StacApiLabelCatalog, StaticLabelCatalog
from eostream.shared.objects import bucket_reader
from eostream.shared.ops import OpsServer
from eostream.shared.runtime import install_stop_signals, preflight
from eostream.shared.settings import configure_logging

if TYPE_CHECKING:
    from eostream.ingest.notify import NotifyListener

log = logging.getLogger(__name__)
REPLAY_GROUP = "ingest-replay"


def build_state(settings: IngestSettings) -> StateStore:
    if settings.state == "postgres":
        from eostream.ingest.state_pg import PostgresStateStore

        if settings.pg_dsn is None:  # checked by the settings too
            raise ConfigError("INGEST_STATE=postgres needs INGEST_PG_DSN or EOSTREAM_PG_DSN")
        return PostgresStateStore(
            settings.pg_dsn.get_secret_value(),
            database=settings.pg_database,
            schema=settings.pg_schema,
        )
    return SqliteStateStore(settings.sqlite_path)


def build_lock(settings: IngestSettings) -> LeaderLock:
    """The leader lock of the state the settings name (ADR 0006)."""
    if settings.state == "postgres":
        from eostream.ingest.leader import PostgresLeaderLock

        if settings.pg_dsn is None:  # checked by the settings too
            raise ConfigError("INGEST_STATE=postgres needs INGEST_PG_DSN or EOSTREAM_PG_DSN")
        return PostgresLeaderLock(
            settings.pg_dsn.get_secret_value(),
            database=settings.pg_database,
            schema=settings.pg_schema,
        )
    path = settings.sqlite_path
    return FileLeaderLock(path.with_name(path.name + ".leader"))


def _s3_reader(settings: IngestSettings) -> Callable[[str, str], bytes] | None:
    return bucket_reader(settings.s3) if settings.s3 is not None else None


def build_sources(settings: IngestSettings) -> list[WatchedSource]:
    reader = _s3_reader(settings)
    return [
        WatchedSource(
            StacApiItemSource(c) if isinstance(c, StacApiSource) else StaticItemSource(c, reader), c
        )
        for c in settings.sources
    ]


@dataclass(frozen=True)
class IngestAdapters:
    """What ingest talks to; the entrypoint picks each one (:func:`from_settings`).

    Whoever built them closes them: the bus (``start``/``close``) and the state
    (``open``/``close``, done by :func:`running` and :func:`serve`).
    """

    bus: Bus
    state: StateStore
    lock: LeaderLock
    sources: tuple[WatchedSource, ...]
    labels: LabelCatalog | None = None


def from_settings(settings: IngestSettings, *, bus: Bus | None = None) -> IngestAdapters:
    """The adapters the settings name. ``bus``: one the caller already has (the embedded mode's
    shared bus, a test's); else the settings' (Kafka or in-process)."""
    return IngestAdapters(
        bus=bus if bus is not None else build_bus(settings, service=SERVICE),
        state=build_state(settings),
        lock=build_lock(settings),
        sources=tuple(build_sources(settings)),
        labels=build_label_catalog(settings),
    )


def build_watcher(
    settings: IngestSettings,
    *,
    bus: Bus,
    state: StateStore,
    sources: Sequence[WatchedSource],
) -> Watcher:
    return Watcher(
        sources,
        store=state,
        bus=bus,
        topic=settings.topic,
        dead_letter_topic=settings.kafka.dead_letter_topic
        if settings.kafka
        else "eostream.deadletter",
        publish_batch=settings.publish_batch,
        poll_interval=settings.poll_interval_seconds,
        backoff=settings.backoff_seconds,
        backoff_max=settings.backoff_max_seconds,
    )


def build_label_catalog(settings: IngestSettings) -> LabelCatalog | None:
    """The label catalogue INGEST_LABELS__CATALOG names: a STAC API (http[s]) or a folder."""
    where = settings.labels.catalog
    if not where:
        return None
    if where.startswith(("http://", "https://")):
        return StacApiLabelCatalog(where)
    return StaticLabelCatalog(Path(where))


def build_label_watcher(
    settings: IngestSettings, *, bus: Bus, state: StateStore, catalog: LabelCatalog | None
) -> LabelWatcher | None:
    if catalog is None:
        return None
    return LabelWatcher(
        catalog,
        store=state,
        bus=bus,
        collections=settings.labels.collections,
        band_set=settings.labels.band_set,
        poll_interval=settings.labels.poll_interval_seconds,
        settle_seconds=settings.labels.settle_seconds,
    )


def build_ingest(
    settings: IngestSettings,
    *,
    bus: Bus,
    state: StateStore,
    lock: LeaderLock,
    sources: Sequence[WatchedSource],
    labels: LabelCatalog | None = None,
) -> IngestRunner:
    """The service on these adapters: the watcher and its replay consumer (and the label
    watcher, when a label catalogue is given), under the lock."""
    watcher = build_watcher(settings, bus=bus, state=state, sources=sources)
    label_watcher = build_label_watcher(settings, bus=bus, state=state, catalog=labels)
    return IngestRunner(settings, bus=bus, watcher=watcher, lock=lock, labels=label_watcher)


class IngestRunner:
    """The watcher and its replay consumer, run while this replica is the leader."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        bus: Bus,
        watcher: Watcher,
        lock: LeaderLock,
        labels: LabelWatcher | None = None,
    ) -> None:
        self._settings = settings
        self._bus = bus
        self.watcher = watcher
        self.labels = labels
        self.leadership = Leadership(lock, retry_seconds=settings.leader_retry_seconds)
        self.consumers: Consumers | None = None
        self.arrivals = Arrivals(watcher, source=settings.push.source)
        self.notified = Arrivals(watcher, source=settings.notify.source)
        self.listener: NotifyListener | None = None
        self._leading = False

    def arrivals_now(self) -> Arrivals | None:
        """Who takes pushed items now: the leader's watcher; None while standing by."""
        return self.arrivals if self._leading else None

    async def run(self, stop: asyncio.Event) -> None:
        """Lead or stand by until ``stop``; the poll or replay in flight is finished first."""
        await self.leadership.run(stop, self._lead)

    async def _lead(self, resign: asyncio.Event) -> None:
        topic = self._settings.replay_topic
        consumers = Consumers(SERVICE, self._settings.consumers)
        consumers.add(
            REPLAY_GROUP, lambda: self._bus.consumer([topic], REPLAY_GROUP, self._on_replay)
        )
        self.consumers = consumers
        consumers.start()
        listening = await self._start_listener(resign)
        self._leading = True
        labelling = asyncio.create_task(self.labels.run(resign)) if self.labels else None
        try:
            await self.watcher.run(resign)
        finally:
            self._leading = False
            if labelling is not None:
                # on resigning, the label watcher finishes its poll as the watcher did: cut
                # between the broker's acknowledgement and the seen-set's row, the next leader
                # would announce the same labels again; it is cancelled when the watcher failed
                if not resign.is_set():
                    labelling.cancel()
                await asyncio.gather(labelling, return_exceptions=True)
            if listening is not None:
                await listening
            await consumers.stop()

    async def _start_listener(self, resign: asyncio.Event) -> asyncio.Task[None] | None:
        """LISTEN for pgstac's NOTIFY while leading (INGEST_NOTIFY__ENABLED)."""
        notify = self._settings.notify
        dsn = self._settings.notify_dsn()
        if not notify.enabled or dsn is None:
            return None
        from eostream.ingest.notify import NotifyListener, install_trigger

        if notify.install_trigger:
            try:
                await install_trigger(dsn, notify.channel)
            except Exception as exc:  # the listener still runs; the poll is the safety net
                log.warning("NOTIFY trigger not installed: %s", exc)
        self.listener = NotifyListener(
            dsn,
            notify.channel,
            self.notified.take,
            reconnect=notify.reconnect_seconds,
            reconnect_max=notify.reconnect_max_seconds,
        )
        return asyncio.create_task(self.listener.run(resign), name="ingest-notify")

    async def _on_replay(self, event: Event, delivery: Delivery) -> None:
        if not isinstance(event, ItemReplayRequested):
            raise InvalidEventError(
                f"{delivery.where()}: expected item.replay_requested, not {event.event_type}"
            )
        await self.watcher.replay(event)

    def readiness(self) -> tuple[bool, str]:
        standing_by = self.leadership.readiness()
        if standing_by is not None:
            return standing_by
        ok, detail = self.watcher.readiness()
        if self.listener is not None:
            listening, what = self.listener.readiness()
            ok, detail = ok and listening, f"{detail}; {what}"
        if self.consumers is not None:
            ready, replay = self.consumers.readiness()
            ok, detail = ok and ready, f"{detail}; {replay}"
        return ok, f"leader: {detail}"

    def liveness(self) -> tuple[bool, str]:
        if self.leadership.role != "leader" or self.consumers is None:
            return True, self.leadership.role
        return self.consumers.liveness()


def http_servers(settings: IngestSettings, runner: IngestRunner) -> list[OpsServer]:
    """The ops server (with the push route when push is on and has no port of its own), and a
    push server of its own on ``INGEST_PUSH__HOST``/``PORT`` when that is set. Not started."""
    servers = [
        OpsServer(
            create_app(
                settings,
                readiness=runner.readiness,
                liveness=runner.liveness,
                arrivals_now=runner.arrivals_now,
            ),
            settings.http_host,
            settings.http_port,
        )
    ]
    if settings.push.enabled and settings.push.port is not None:
        push_app = create_app(
            settings,
            readiness=runner.readiness,
            arrivals_now=runner.arrivals_now,
            ops=False,
            pushed=True,
        )
        servers.append(OpsServer(push_app, settings.push.host, settings.push.port))
    return servers


@asynccontextmanager
async def running(settings: IngestSettings, adapters: IngestAdapters) -> AsyncIterator[Watcher]:
    """The state open and the watcher built on ``adapters``; the state closed on the way out.

    The bus is the caller's to start before and close after (:func:`started`).
    """
    await adapters.state.open()
    try:
        yield build_watcher(
            settings, bus=adapters.bus, state=adapters.state, sources=adapters.sources
        )
    finally:
        await adapters.state.close()


@asynccontextmanager
async def started(bus: Bus) -> AsyncIterator[Bus]:
    """``bus`` started, and closed on the way out: for the entrypoint that built it."""
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


async def serve(settings: IngestSettings, adapters: IngestAdapters) -> None:
    """``eostream ingest run``: watch until SIGTERM/SIGINT, then finish the poll and close.

    ``adapters`` (from :func:`from_settings`) are this process's: started here, closed here.
    """
    configure_logging(settings.log_level)
    await preflight(settings)
    if not settings.sources:
        log.warning("no sources configured (INGEST_SOURCES / INGEST_SOURCES_FILE): idle")
    stop = asyncio.Event()
    install_stop_signals(stop.set)
    async with started(adapters.bus):
        await adapters.state.open()
        try:
            runner = build_ingest(
                settings,
                bus=adapters.bus,
                state=adapters.state,
                lock=adapters.lock,
                sources=adapters.sources,
                labels=adapters.labels,
            )
            servers = http_servers(settings, runner)
            for server in servers:
                await server.start()
            if settings.push.enabled:
                log.info("push: POST %s%s", servers[-1].url, PUSH_PATH)
            log.info(
                "watching %d source(s): %s",
                len(settings.sources),
                ", ".join(s.name for s in settings.sources),
            )
            try:
                await runner.run(stop)
            finally:
                for server in servers:
                    await server.stop()
        finally:
            await adapters.state.close()
    log.info("stopped")
