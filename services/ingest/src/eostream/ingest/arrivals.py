"""Items that arrive by push (signed CloudEvents, :mod:`eostream.ingest.push`) or by PostgreSQL
NOTIFY (:mod:`eostream.ingest.notify`): which source they belong to, and one way in.

A notification names an item (id and collection); it is never taken on its word. The item is
read from the configured source it belongs to, as the poller would read it, and goes through the
watcher's page path (:meth:`Watcher.take`): the same seen-set keyed by (source, item id,
version), the same mapping, filter and dead letters. So an item pushed and later polled (or
polled, then pushed, or notified twice) is announced once, with the same event id, and only
items of configured sources can be announced at all (ADR 0016).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from eostream.ingest import metrics
from eostream.ingest.errors import PushRefused, SourceUnavailable
from eostream.ingest.settings import StacApiSource
from eostream.ingest.watcher import WatchedSource, Watcher

log = logging.getLogger(__name__)

Via = Literal["push", "notify"]
Outcome = Literal["announced", "duplicate", "filtered", "rejected"]


@dataclass(frozen=True)
class Arrival:
    """An item a notification names."""

    item_id: str
    collection: str | None
    via: Via
    #: the notification's own id (CloudEvent id, NOTIFY has none), for the logs
    notice: str | None = None


@dataclass(frozen=True)
class Taken:
    """What became of an arrival."""

    outcome: Outcome
    item_id: str
    collection: str | None
    source: str
    detail: str


class Arrivals:
    """Take arrivals for ``watcher``; ``source``: the only configured source they may belong to
    (None: the source whose filter admits the item's collection, STAC APIs first)."""

    def __init__(self, watcher: Watcher, *, source: str | None = None) -> None:
        self._watcher = watcher
        self._source = source

    def source_for(self, collection: str | None) -> WatchedSource | None:
        candidates = [
            w
            for w in self._watcher.sources
            if (self._source is None or w.config.name == self._source) and _admits(w, collection)
        ]
        candidates.sort(key=lambda w: not isinstance(w.config, StacApiSource))
        return candidates[0] if candidates else None

    async def take(self, arrival: Arrival) -> Taken:
        """Read the item from its source and announce it once; raises :class:`PushRefused`
        (not watched, not found: 4xx; source unreadable: 503)."""
        watched = self.source_for(arrival.collection)
        if watched is None:
            metrics.NOTIFICATIONS.labels(arrival.via, "not_watched").inc()
            raise PushRefused(
                422,
                "not_watched",
                f"no configured source watches collection {arrival.collection!r}"
                + (f" (only source {self._source!r} takes notifications)" if self._source else ""),
            )
        name = watched.config.name
        began = time.perf_counter()
        try:
            raw = await watched.source.fetch(arrival.item_id, collection=arrival.collection)
        except SourceUnavailable as exc:
            metrics.NOTIFICATIONS.labels(arrival.via, "failed").inc()
            raise PushRefused(503, "unavailable", f"source {name!r} cannot be read: {exc}") from exc
        if raw is None:
            metrics.NOTIFICATIONS.labels(arrival.via, "not_found").inc()
            raise PushRefused(
                404,
                "item_not_found",
                f"source {name!r} has no item {arrival.item_id!r} in {arrival.collection!r}",
            )
        read = time.perf_counter() - began
        report = await self._watcher.take(watched, raw)
        if report.published:
            taken = Taken("announced", arrival.item_id, arrival.collection, name, "announced")
        elif report.rejected:
            reason = report.rejections[0] if report.rejections else "rejected"
            taken = Taken("rejected", arrival.item_id, arrival.collection, name, reason)
        elif report.filtered:
            why = report.filtered_why[0] if report.filtered_why else "filtered out"
            taken = Taken("filtered", arrival.item_id, arrival.collection, name, why)
        else:
            taken = Taken(
                "duplicate", arrival.item_id, arrival.collection, name, "already announced"
            )
        metrics.NOTIFICATIONS.labels(arrival.via, taken.outcome).inc()
        log.info(
            "%s: %s %s (%s%s): %s (read %.3fs, mapped and published %.3fs)",
            name,
            arrival.via,
            arrival.item_id,
            arrival.collection,
            f", notification {arrival.notice}" if arrival.notice else "",
            taken.detail,
            read,
            report.seconds,
        )
        return taken


def _admits(watched: WatchedSource, collection: str | None) -> bool:
    wanted = watched.config.filter.collections
    return not wanted or collection in wanted


def arrival_from_data(data: Any, *, subject: str | None, via: Via, notice: str | None) -> Arrival:
    """The item a notification's data names: a STAC item (``id``, ``collection``), or a
    reference ``{"id"|"item_id": ..., "collection": ...}``; the CloudEvent's subject may give
    the id. Raises :class:`PushRefused` (422) when it names none."""
    if isinstance(data, dict):
        ident = data.get("id", data.get("item_id", subject))
        collection = data.get("collection")
    else:
        ident, collection = subject, None
    if not isinstance(ident, str) or not ident or len(ident) > 256:
        raise PushRefused(
            422,
            "invalid_notification",
            "the notification names no item: data needs an id (or item_id) of 1 to 256 "
            "characters (a subject counts in structured mode only: binary mode's ce-* headers "
            "are not signed)",
        )
    if collection is not None and (not isinstance(collection, str) or len(collection) > 256):
        raise PushRefused(422, "invalid_notification", "data.collection must be a string")
    return Arrival(ident, collection, via, notice)
