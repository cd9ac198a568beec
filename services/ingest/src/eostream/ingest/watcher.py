"""The watcher: poll each source, map and validate its items, announce the new ones.

Per page: drop what the seen-set already holds, map every other item to a SceneDiscovered
(or reject it to the dead-letter topic with the reason), publish the events and wait for the
broker's acknowledgement, and only then record them as seen. The watermark (newest item
datetime) moves at the end of a complete poll; the next poll searches from watermark - overlap.

:meth:`Watcher.replay` runs one item an operator asked for again (``eostream dlq replay`` of a
rejected item) through the same page path, after forgetting its rejection; pages and replays take
turns (one lock), so an item is never announced by both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from eostream.ingest import metrics, rejects
from eostream.ingest.errors import ItemRejected, SourceUnavailable
from eostream.ingest.filters import filtered_out
from eostream.ingest.mapping import item_id, item_version, to_scene
from eostream.ingest.settings import StacApiSource, StaticSource
from eostream.ingest.sources import ItemSource, RawItem
from eostream.ingest.state import SeenRecord, StateStore
from eostream.shared.bus import Bus
from eostream.shared.errors import InvalidEventError
from eostream.shared.events import ItemReplayRequested, SceneDiscovered
from eostream.shared.metrics import at_zero
from eostream.shared.redaction import redact_urls

log = logging.getLogger(__name__)
SERVICE = "ingest"
#: the seen-set version of an item whose file could not be read (a static catalogue's)
UNREADABLE = "unreadable"


@dataclass
class PollReport:
    source: str
    seen: int = 0
    published: int = 0
    rejected: int = 0
    filtered: int = 0
    duplicates: int = 0
    watermark: datetime | None = None
    seconds: float = 0.0
    rejections: list[str] = field(default_factory=list)
    filtered_why: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WatchedSource:
    source: ItemSource
    config: StacApiSource | StaticSource


class Watcher:
    def __init__(
        self,
        sources: Sequence[WatchedSource],
        *,
        store: StateStore,
        bus: Bus,
        topic: str,
        dead_letter_topic: str,
        publish_batch: int = 100,
        poll_interval: float = 60.0,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        self._sources = list(sources)
        # each source's first rejected item must be a rise from 0 (see shared metrics.at_zero)
        at_zero(metrics.ITEMS, [w.config.name for w in self._sources], metrics.ITEM_OUTCOMES)
        self._store = store
        self._bus = bus
        self._topic = topic
        self._dead_letter_topic = dead_letter_topic
        self._batch = publish_batch
        self._interval = poll_interval
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._healthy: dict[str, bool] = {}
        self._failures: dict[str, int] = {}
        self._errors: dict[str, str] = {}
        self._turn = asyncio.Lock()  # one page (or replayed item) at a time

    # -- one poll ----------------------------------------------------------------------------

    async def poll(
        self,
        watched: WatchedSource,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        replace: bool = False,
        backfill: bool = False,
    ) -> PollReport:
        """Poll one source once. ``backfill``: search [start, end] and leave the watermark be."""
        name, config = watched.config.name, watched.config
        report = PollReport(name)
        began = time.perf_counter()
        rule = config.filter
        incremental = watched.source.incremental and not backfill
        if incremental and isinstance(config, StacApiSource):
            mark = await self._store.watermark(name)
            start = rule.start
            if mark is not None:
                behind = mark - timedelta(seconds=config.overlap_seconds)
                start = behind if start is None else max(start, behind)
            end = rule.end
        newest: datetime | None = None
        handled: set[tuple[str, str]] = set()
        async for page in watched.source.pages(start=start, end=end):
            async with self._turn:
                newest = _later(
                    newest,
                    await self._page(
                        watched,
                        page,
                        report,
                        handled,
                        replace,
                        start if backfill else None,
                        end if backfill else None,
                    ),
                )
        if incremental and newest is not None:
            await self._store.set_watermark(name, min(newest, datetime.now(UTC)))
        report.watermark = await self._store.watermark(name)
        if report.watermark is not None:
            lag = (datetime.now(UTC) - report.watermark).total_seconds()
            metrics.WATERMARK_LAG.labels(name).set(max(0.0, lag))
        report.seconds = time.perf_counter() - began
        metrics.POLL_DURATION.labels(name).observe(report.seconds)
        return report

    async def _page(
        self,
        watched: WatchedSource,
        page: list[RawItem],
        report: PollReport,
        handled: set[tuple[str, str]],
        replace: bool,
        start: datetime | None,
        end: datetime | None,
        replayed_from: str | None = None,
    ) -> datetime | None:
        name, config = watched.config.name, watched.config
        report.seen += len(page)
        metrics.ITEMS.labels(name, "seen").inc(len(page))
        broken = [r for r in page if r.unreadable is not None]
        if broken:
            page = [r for r in page if r.unreadable is None]
            await self._unreadable(name, broken, report, handled, replayed_from)
        keyed = [((item_id(r.item), item_version(r.item)), r) for r in page]
        fresh = (
            {k for k, _ in keyed}
            if replace
            else await self._store.unseen(name, [k for k, _ in keyed])
        )
        # a new version of an item announced before (re-processed with a newer baseline, say):
        # inference had skipped it as a scene its model had mapped; it replaces that map now
        updated = set() if replace else await self._store.published(name, [i for i, _ in fresh])
        events: list[tuple[SceneDiscovered, str]] = []
        rejected: list[tuple[RawItem, ItemRejected, str]] = []
        newest: datetime | None = None
        for key, raw in keyed:
            if key not in fresh or key in handled:
                report.duplicates += 1
                continue
            handled.add(key)
            try:
                scene = to_scene(
                    raw.item,
                    source=name,
                    href=raw.href,
                    assume_level=config.assume_level,
                    replace=replace,
                    supersedes=key[0] in updated,
                )
            except ItemRejected as exc:
                rejected.append((raw, exc, key[1]))
                continue
            except Exception as exc:  # a shape no rule foresaw: this item, not the whole poll
                log.warning("%s: item %s could not be read", name, key[0], exc_info=True)
                reason = f"unreadable item: {type(exc).__name__}: {exc}"
                rejected.append((raw, ItemRejected(key[0], reason[:500]), key[1]))
                continue
            newest = _later(newest, scene.datetime)
            why = filtered_out(scene, raw.item, config.filter)
            if why is None and start is not None and scene.datetime < start:
                why = "before the backfill range"
            if why is None and end is not None and scene.datetime > end:
                why = "after the backfill range"
            if why is not None:
                log.debug("%s: %s filtered out: %s", name, scene.item_id, why)
                report.filtered += 1
                report.filtered_why.append(why)
                continue
            events.append((scene, key[1]))
        metrics.ITEMS.labels(name, "duplicate").inc(report.duplicates)
        metrics.ITEMS.labels(name, "filtered").inc(report.filtered)
        for chunk_start in range(0, len(events), self._batch):
            chunk = events[chunk_start : chunk_start + self._batch]
            await self._bus.publish_many(self._topic, [scene for scene, _ in chunk])
            # Acknowledged by the broker: now, and only now, remember them.
            await self._store.mark_seen(
                name,
                [
                    SeenRecord(s.item_id, version, "published", str(s.id), s.datetime)
                    for s, version in chunk
                ],
            )
            report.published += len(chunk)
            metrics.ITEMS.labels(name, "published").inc(len(chunk))
        for raw, why_not, version in rejected:
            await self._dead_letter(name, raw, why_not, replayed_from)
            await self._store.mark_seen(name, [SeenRecord(why_not.item_id, version, "rejected")])
            report.rejected += 1
            report.rejections.append(str(why_not))
            metrics.ITEMS.labels(name, "rejected").inc()
        return newest

    async def _unreadable(
        self,
        name: str,
        broken: list[RawItem],
        report: PollReport,
        handled: set[tuple[str, str]],
        replayed_from: str | None,
    ) -> None:
        """Items whose file could not be read: one dead letter each (reason and href), once.

        Named by their file (``item-15.json`` -> ``item-15``) under the version ``unreadable``,
        so the same broken file is not dead-lettered on every poll, and the item is announced
        as soon as its file is fixed (a fixed item has a version of its own)."""
        keyed = [((rejects.unreadable_id(r), UNREADABLE), r) for r in broken]
        fresh = await self._store.unseen(name, [k for k, _ in keyed])
        for key, raw in keyed:
            if key not in fresh or key in handled:
                report.duplicates += 1
                continue
            handled.add(key)
            why = ItemRejected(key[0], raw.unreadable or "the item file cannot be read")
            await self._dead_letter(name, raw, why, replayed_from)
            await self._store.mark_seen(name, [SeenRecord(key[0], UNREADABLE, "rejected")])
            report.rejected += 1
            report.rejections.append(str(why))
            metrics.ITEMS.labels(name, "rejected").inc()

    async def _dead_letter(
        self, source: str, raw: RawItem, exc: ItemRejected, replayed_from: str | None = None
    ) -> None:
        await rejects.dead_letter(
            self._bus, self._dead_letter_topic, source, raw, exc, replayed_from
        )

    # -- a replayed item --------------------------------------------------------------------

    async def replay(self, request: ItemReplayRequested) -> PollReport:
        """Look again at an item this watcher rejected: read it from its source as it is now,
        forget the rejection, and map/publish/record it as a poll would (once, never twice).

        Raises InvalidEventError when the source is not configured here or the item is gone
        (the request is dead-lettered), SourceUnavailable when the source cannot be read now.
        """
        name = request.source_name
        watched = next((w for w in self._sources if w.config.name == name), None)
        if watched is None:
            known = ", ".join(w.config.name for w in self._sources) or "none"
            raise InvalidEventError(
                f"replay of {request.item_id}: no source named {name!r} here (configured: {known})"
            )
        raw = await watched.source.fetch(
            request.item_id, collection=request.collection, href=request.item_href
        )
        if raw is None:
            raise InvalidEventError(
                f"replay of {request.item_id}: the item is no longer at source {name!r}"
            )
        report = PollReport(name)
        began = time.perf_counter()
        async with self._turn:
            forgotten = await self._store.forget_rejection(name, request.item_id)
            report.seen = 1
            metrics.ITEMS.labels(name, "seen").inc()
            await self._page(
                watched, [raw], report, set(), False, None, None, replayed_from=request.letter_id
            )
        report.seconds = time.perf_counter() - began
        outcome = (
            "announced"
            if report.published
            else "rejected again"
            if report.rejected
            else "filtered out"
            if report.filtered
            else "already announced"
        )
        log.info(
            "%s: replay of %s (dead letter %s, %d rejection(s) forgotten): %s",
            name,
            request.item_id,
            request.letter_id,
            forgotten,
            outcome,
        )
        return report

    # -- an item pushed or notified ---------------------------------------------------------

    async def take(self, watched: WatchedSource, raw: RawItem) -> PollReport:
        """One item that arrived by push or NOTIFY (:mod:`eostream.ingest.arrivals`), through
        the page path a poll takes: the same seen-set, mapping, filter and dead letters, in turn
        with the polls, so an item pushed and later polled (or the other way) is announced once.
        """
        name = watched.config.name
        report = PollReport(name)
        began = time.perf_counter()
        async with self._turn:
            report.seen = 1
            metrics.ITEMS.labels(name, "seen").inc()
            await self._page(watched, [raw], report, set(), False, None, None)
        report.seconds = time.perf_counter() - began
        return report

    # -- the loop ----------------------------------------------------------------------------

    @property
    def sources(self) -> list[WatchedSource]:
        return list(self._sources)

    def readiness(self) -> tuple[bool, str]:
        # called from the ops server's worker thread while the loop updates these: copies
        # (atomic for a dict of str) are read, not the dicts themselves
        healthy, errors = dict(self._healthy), dict(self._errors)
        waiting = [w.config.name for w in self._sources if w.config.name not in healthy]
        failing = [n for n, ok in healthy.items() if not ok]
        if failing:
            return False, "; ".join(f"{n}: {errors.get(n, 'failing')}" for n in failing)
        if waiting:
            return False, f"first poll pending: {', '.join(waiting)}"
        return True, f"{len(self._sources)} source(s) polled"

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every source until ``stop`` is set; the poll in flight is finished first."""
        try:
            await self._run(stop)
        finally:
            # a replica that stopped polling (resigned, standing by) says nothing of the
            # sources: its last "down" kept the source-down alert firing on a healthy standby
            for watched in self._sources:
                for gauge in (metrics.SOURCE_UP, metrics.WATERMARK_LAG):
                    gauge.remove(watched.config.name)

    async def _run(self, stop: asyncio.Event) -> None:
        next_at = {w.config.name: 0.0 for w in self._sources}
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            for watched in self._sources:
                name = watched.config.name
                if stop.is_set() or loop.time() < next_at[name]:
                    continue
                next_at[name] = loop.time() + self._interval
                try:
                    report = await self.poll(watched)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._on_failure(name, exc)
                    next_at[name] = loop.time() + self._delay(name)
                    continue
                self._healthy[name], self._failures[name] = True, 0
                metrics.SOURCE_UP.labels(name).set(1)
                log.info(
                    "%s: seen %d, published %d, rejected %d, filtered %d, duplicates %d in %.2fs "
                    "(watermark %s)",
                    name,
                    report.seen,
                    report.published,
                    report.rejected,
                    report.filtered,
                    report.duplicates,
                    report.seconds,
                    report.watermark.isoformat() if report.watermark else "-",
                )
            wake = min(next_at.values(), default=loop.time() + self._interval)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.05, wake - loop.time()))
            except TimeoutError:
                pass

    def _on_failure(self, name: str, exc: Exception) -> None:
        self._healthy[name] = False
        self._failures[name] = self._failures.get(name, 0) + 1
        # /readyz shows it: no credential of a source's URL (a library's own error text)
        self._errors[name] = redact_urls(f"{type(exc).__name__}: {exc}")[:300]
        metrics.SOURCE_ERRORS.labels(name, type(exc).__name__).inc()
        metrics.SOURCE_UP.labels(name).set(0)
        log.warning(
            "%s: poll failed (%d in a row), retrying in %.1fs: %s",
            name,
            self._failures[name],
            self._delay(name),
            self._errors[name],
            exc_info=None if isinstance(exc, OSError | SourceUnavailable) else exc,
        )

    def _delay(self, name: str) -> float:
        failures = max(1, self._failures.get(name, 1))
        return float(min(self._backoff_max, self._backoff * 2 ** (failures - 1)))


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
