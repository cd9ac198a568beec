"""The durable bus of the embedded mode: the in-process bus's behaviour on an on-disk log.

Records, committed offsets and consumer leases live in one SQLite file
(:mod:`eostream.shared.bus.sqlite_log`), so a crash, a SIGKILL or a Ctrl-C at any point loses
nothing: a publish returns once its record is on disk, and a record is committed only after its
handler returned (or it was dead-lettered), so a record in flight at a crash is delivered again
to the group's next consumer, as on Kafka (ADR 0014). Same wire format and the same error policy
(:class:`~eostream.shared.bus.base.RecordProcessor`) as the other adapters.

One partition per topic; a group's records go to one consumer at a time (a lease per group and
topic); several processes may share the file (SQLite's locks, WAL mode). Every database call runs
on the bus's one thread, so the event loop never waits on the disk and threads may share a bus.
Consumers of this bus object are woken at once by its publishes; records written by another
process are found by polling every :data:`POLL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from eostream.shared import metrics
from eostream.shared.bus.base import Handler as Handler
from eostream.shared.bus.base import RetryPolicy, encode_all, parse_dead_letter
from eostream.shared.bus.sqlite_consumer import SqliteConsumer
from eostream.shared.bus.sqlite_log import SqliteLog
from eostream.shared.codec import WireMessage, encode
from eostream.shared.events import DeadLetter, Event

log = logging.getLogger(__name__)

T = TypeVar("T")
#: How often an idle consumer looks for records another process wrote.
POLL_SECONDS = 0.25


class SqliteBus:
    """The :class:`~eostream.shared.bus.base.Bus` port on a SQLite log file at ``path``.

    The file is opened on first use (``start`` opens it at once, to fail early) and may be used
    again after ``close`` (it is reopened), so a consumer that outlives the system still ends
    cleanly.
    """

    def __init__(
        self,
        path: Path,
        *,
        service: str,
        dead_letter_topic: str = "eostream.deadletter",
        policy: RetryPolicy | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.path = path
        self._service = service
        self.dead_letter_topic = dead_letter_topic
        self._policy = policy or RetryPolicy()
        self.poll_seconds = poll_seconds
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="eostream-bus"
        )
        self._log: SqliteLog | None = None
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()

    # -- the database thread -----------------------------------------------------------------

    def _opened(self) -> SqliteLog:
        if self._log is None:
            self._log = SqliteLog(self.path)
        return self._log

    async def call(self, fn: Callable[[SqliteLog], T]) -> T:
        """Run ``fn`` with the log on the bus's database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._opened()))

    def call_blocking(self, fn: Callable[[SqliteLog], T]) -> T:
        """The same from synchronous code (tools and tests): waits for the database thread."""
        return self._executor.submit(lambda: fn(self._opened())).result()

    # -- Bus -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.ensure_topics([self.dead_letter_topic])

    async def close(self) -> None:
        def shut(_: SqliteLog) -> None:
            if self._log is not None:
                self._log.close()
                self._log = None

        if self._log is not None:
            await self.call(shut)

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        wanted = list(topics)
        await self.call(lambda db: db.ensure_topics(wanted))

    async def publish(self, topic: str, event: Event) -> None:
        await self._append(topic, [encode(event, source=self._service)])
        metrics.PUBLISHED.labels(self._service, topic).inc()

    async def publish_many(self, topic: str, events: Sequence[Event]) -> None:
        await self._append(topic, encode_all(events, self._service))
        metrics.PUBLISHED.labels(self._service, topic).inc(len(events))

    async def publish_raw(self, topic: str, message: WireMessage) -> None:
        await self._append(topic, [message])

    async def _append(self, topic: str, messages: Sequence[WireMessage]) -> None:
        if messages:
            await self.call(lambda db: db.append(topic, messages))
            self._wake()

    def consumer(
        self, topics: Sequence[str], group: str, handler: Handler, *, dead_letter: bool = True
    ) -> SqliteConsumer:
        return SqliteConsumer(self, list(topics), group, handler, dead_letter=dead_letter)

    async def read_dead_letters(self, *, limit: int, timeout: float = 5.0) -> list[DeadLetter]:
        records = await self.read_topic(self.dead_letter_topic)
        return [parse_dead_letter(m) for m in records[:limit]]

    async def read_topic(self, topic: str, *, timeout: float = 20.0) -> list[WireMessage]:
        """Every record of ``topic``, oldest first, without a group (nothing is committed)."""
        found = await self.call(lambda db: db.read(topic))
        return [r.message for r in found]

    # -- tools and tests (blocking) --------------------------------------------------------------

    def size(self, topic: str) -> int:
        return self.call_blocking(lambda db: db.end(topic))

    def records(self, topic: str) -> list[WireMessage]:
        """Every record of a topic, oldest first (tests and tools; consumers use consumer())."""
        return [r.message for r in self.call_blocking(lambda db: db.read(topic))]

    # -- waking consumers ----------------------------------------------------------------------

    def waiter(self) -> asyncio.Event:
        """An event set whenever this bus object appends a record (from any thread)."""
        event = asyncio.Event()
        with self._waiters_lock:
            self._waiters.add((asyncio.get_running_loop(), event))
        return event

    def drop_waiter(self, event: asyncio.Event) -> None:
        with self._waiters_lock:
            self._waiters = {(lp, ev) for lp, ev in self._waiters if ev is not event}

    def _wake(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)
