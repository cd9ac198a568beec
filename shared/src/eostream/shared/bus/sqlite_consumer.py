"""The consumer of the durable embedded bus: hold the group's lease, hand each record to the
shared RecordProcessor, commit it (fenced by the lease) once handled (ADR 0003, ADR 0014)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

from eostream.shared import metrics
from eostream.shared.bus.base import ConsumerProgress, Delivery, Handler, RecordProcessor
from eostream.shared.bus.sqlite_log import (
    LEASE_SECONDS,
    Record,
    SqliteLog,
    forget_owner,
    register_owner,
)
from eostream.shared.codec import header_text

if TYPE_CHECKING:
    from eostream.shared.bus.sqlite import SqliteBus

log = logging.getLogger(__name__)

#: Records fetched per topic and poll.
BATCH = 50
#: How often the leases are renewed, and free ones looked for, while the consumer runs.
LEASE_CHECK_SECONDS = min(1.0, LEASE_SECONDS / 10)


class SqliteConsumer:
    def __init__(
        self,
        bus: SqliteBus,
        topics: list[str],
        group: str,
        handler: Handler,
        *,
        dead_letter: bool = True,
    ) -> None:
        self._bus = bus
        self._topics = topics
        self.group = group
        self._owner = uuid.uuid4().hex
        self._owned: set[str] = set()
        self._position: dict[str, int] = {}
        self._stopping = asyncio.Event()
        self._wake: asyncio.Event | None = None
        self._ready = False
        self._processor = RecordProcessor(
            service=bus._service,
            topics=topics,
            handler=handler,
            policy=bus._policy,
            dead_letter=(lambda m: bus.publish_raw(bus.dead_letter_topic, m))
            if dead_letter
            else None,
        )

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def progress(self) -> ConsumerProgress:
        return self._processor.progress

    async def stop(self) -> None:
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()

    # -- leases ------------------------------------------------------------------------------

    async def _acquire(self) -> None:
        group, topics, owner = self.group, self._topics, self._owner
        owned = await self._bus.call(lambda db: db.acquire(group, topics, owner))
        new = sorted(owned - self._owned)
        if new:  # newly ours: start at the group's commit
            starts = await self._bus.call(lambda db: {t: db.committed(group, t) for t in new})
            for topic, offset in starts.items():
                self._position[topic] = offset
                log.info("%s: took %s[0] at offset %d", group, topic, offset)
            if self._wake is not None:
                self._wake.set()
        for topic in self._owned - owned:
            self._lost(topic)
        self._owned = owned

    def _lost(self, topic: str) -> None:
        log.warning("%s: lost %s[0] to another consumer of the group", self.group, topic)
        self._owned.discard(topic)
        self._position.pop(topic, None)
        metrics.CONSUMER_LAG.labels(self._bus._service, topic, self.group, "0").set(0)

    async def _keep_leases(self) -> None:
        """Renew the leases while the consumer runs (a long handler included)."""
        while True:
            await asyncio.sleep(LEASE_CHECK_SECONDS)
            try:
                await self._acquire()
            except Exception as exc:  # the next check tries again; a commit is fenced anyway
                log.warning("%s: could not renew the leases: %s", self.group, exc)

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        register_owner(self._owner)
        self._wake = self._bus.waiter()
        keeper: asyncio.Task[None] | None = None
        try:
            await self._bus.ensure_topics(self._topics)
            await self._acquire()
            keeper = asyncio.create_task(self._keep_leases(), name=f"{self.group}-leases")
            self._ready = True
            while not self._stopping.is_set():
                self._wake.clear()
                batch = await self._fetch()
                if not batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._bus.poll_seconds)
                    continue
                for record in batch:
                    if self._stopping.is_set() or record.topic not in self._owned:
                        break
                    await self._handle(record)
        finally:
            self._ready = False
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            self._bus.drop_waiter(self._wake)
            await self._release()

    async def _release(self) -> None:
        group, owner = self.group, self._owner
        try:
            await asyncio.shield(self._bus.call(lambda db: db.release(group, owner)))
        except Exception as exc:  # the lease lapses: this process no longer vouches for it
            log.warning("%s: could not release the leases: %s", group, exc)
        finally:
            forget_owner(owner)
            for topic in self._owned:
                metrics.CONSUMER_LAG.labels(self._bus._service, topic, group, "0").set(0)
            self._owned = set()

    async def _fetch(self) -> list[Record]:
        """The next records of every topic this consumer holds; counts what waits."""
        wanted = {t: self._position[t] for t in self._owned if t in self._position}

        def read(db: SqliteLog) -> tuple[list[Record], dict[str, int]]:
            records: list[Record] = []
            ends: dict[str, int] = {}
            for topic, start in wanted.items():
                ends[topic] = db.end(topic)
                if ends[topic] > start:
                    records.extend(db.read(topic, start, BATCH))
            return records, ends

        records, ends = await self._bus.call(read)
        waiting = 0
        for topic, end in ends.items():
            lag = max(0, end - wanted[topic])
            waiting += lag
            metrics.CONSUMER_LAG.labels(self._bus._service, topic, self.group, "0").set(lag)
        if records:
            self.progress.waiting = waiting
        else:
            self.progress.idle(0)
        return records

    async def _handle(self, record: Record) -> None:
        message = record.message
        key = message.key.decode("utf-8", errors="replace") if message.key else None
        delivery = Delivery(record.topic, 0, record.offset, key, header_text(message.headers))
        await self._processor.process(message, delivery)
        group, owner, topic, after = self.group, self._owner, record.topic, record.offset + 1
        if await self._bus.call(lambda db: db.commit(group, topic, after, owner)):
            self._position[topic] = after
        else:  # presumed gone and replaced: the new holder handles the record again
            log.warning(
                "%s: commit of %s refused (lease lost); it will be redelivered",
                group,
                delivery.where(),
            )
            self._lost(topic)
