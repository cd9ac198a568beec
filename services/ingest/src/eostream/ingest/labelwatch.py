"""Label collections, announced as datasets: ``DatasetUpdated`` once per change of their items.

The label watcher lists the label collections of a label catalogue (the stack's STAC API, or the
embedded mode's static catalogue under the home; :mod:`eostream.shared.label_catalog`), hashes
each collection's items (``items_digest``: id, geometry, properties, assets and source links,
what a change to the labels changes) and publishes ``DatasetUpdated(dataset=<collection>, href,
digest)`` on ``eostream.datasets.updated`` when that digest is new. The state store's seen-set
(the scene watcher's, under the source ``labels:<collection>``) records a digest only after the
broker acknowledged the event, so a restart re-announces nothing and loses nothing. The
trainer's request id derives from the digest of the labels as it reads them, so a redelivered
announcement trains once, and one overtaken by newer labels trains those (once). A new digest is
announced once it has held for ``settle_seconds`` (``INGEST_LABELS__SETTLE_SECONDS``): several
dates imported one after the other start one training.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eostream.ingest.state import SeenRecord, StateStore
from eostream.shared import topics
from eostream.shared.bus import Bus
from eostream.shared.events import DatasetUpdated
from eostream.shared.label_catalog import ALL_ITEMS, LabelCatalog, LabelQuery, items_digest

log = logging.getLogger(__name__)
SOURCE_PREFIX = "labels:"


@dataclass(frozen=True)
class Announced:
    collection: str
    items: int
    digest: str
    published: bool


class LabelWatcher:
    """Announce changed label collections of ``catalog`` (``collections``: these only)."""

    def __init__(
        self,
        catalog: LabelCatalog,
        *,
        store: StateStore,
        bus: Bus,
        collections: Sequence[str] = (),
        band_set: str = "l2a",
        poll_interval: float = 60.0,
        settle_seconds: float = 0.0,
        topic: str = topics.DATASETS_UPDATED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._bus = bus
        self._collections = tuple(collections)
        self._band_set = band_set
        self._interval = poll_interval
        self._settle = settle_seconds
        self._topic = topic
        self._clock = clock
        #: collection -> (a new digest, when it was first seen): announced once it has settled
        self._pending: dict[str, tuple[str, float]] = {}

    def _settled(self, name: str, digest: str) -> bool:
        """Whether ``digest`` has stayed ``name``'s for ``settle_seconds``: a user importing
        several dates one after the other starts one training, not one per date."""
        if self._settle <= 0:
            return True
        now = self._clock()
        seen, since = self._pending.get(name, ("", now))
        if seen != digest:
            self._pending[name] = (digest, now)
            since = now
            log.info("labels %s changed: announced once they hold still for %.0f s",
                     name, self._settle)  # fmt: skip
        return now - since >= self._settle

    def _list(self) -> list[tuple[str, list[dict[str, Any]] | None]]:
        """(collection id, its items; None when they cannot be read) for every watched
        collection (blocking). The catalogue's list of collections failing fails the poll."""
        names = self._collections or tuple(str(c["id"]) for c in self._catalog.collections())
        found: list[tuple[str, list[dict[str, Any]] | None]] = []
        for name in names:
            try:
                found.append((name, self._catalog.search(LabelQuery(name, limit=ALL_ITEMS))))
            except Exception as exc:  # this collection's problem: the others are announced
                log.warning("label collection %s not read: %s", name, exc)
                found.append((name, None))
        return found

    async def poll(self) -> list[Announced]:
        """One look at every watched collection; announces those whose digest is new. A
        collection that cannot be read is logged and left for the next poll; the others go on
        (one broken item file stopped every collection's announcements, at every poll)."""
        done: list[Announced] = []
        for name, items in await asyncio.to_thread(self._list):
            if not items:
                continue
            digest = items_digest(items)
            source = SOURCE_PREFIX + name
            if not await self._store.unseen(source, [(name, digest)]):
                self._pending.pop(name, None)
                done.append(Announced(name, len(items), digest, published=False))
                continue
            if not self._settled(name, digest):
                done.append(Announced(name, len(items), digest, published=False))
                continue
            event = DatasetUpdated(
                dataset=name,
                href=self._catalog.href(name),
                digest=digest,
                band_set=self._band_set,
                source="ingest",
            )
            await self._bus.publish(self._topic, event)
            await self._store.mark_seen(
                source, [SeenRecord(name, digest, "published", event_id=str(event.id))]
            )
            self._pending.pop(name, None)
            log.info(
                "labels %s changed (%d items, digest %s): announced", name, len(items), digest[:16]
            )
            done.append(Announced(name, len(items), digest, published=True))
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``; a failed poll (catalogue or broker away) is retried next time."""
        while not stop.is_set():
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the catalogue or the broker is away: try again later
                log.warning("label collections not polled: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), self._interval)
            except TimeoutError:
                pass
