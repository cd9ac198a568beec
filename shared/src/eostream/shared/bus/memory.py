"""The in-process bus of the embedded mode: same wire format, same error policy, no broker.

Each topic is an append-only log of :class:`WireMessage` records in memory (one partition);
consumer groups keep a committed offset each, so two groups each see every record and a consumer
that stops and is started again resumes after its last commit, as with Kafka.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from eostream.shared import metrics
from eostream.shared.bus.base import (
    ConsumerProgress,
    Delivery,
    Handler,
    RecordProcessor,
    RetryPolicy,
    encode_all,
    parse_dead_letter,
)
from eostream.shared.codec import WireMessage, encode, header_text
from eostream.shared.events import DeadLetter, Event

log = logging.getLogger(__name__)


class InMemoryBus:
    def __init__(
        self,
        *,
        service: str,
        dead_letter_topic: str = "eostream.deadletter",
        policy: RetryPolicy | None = None,
    ) -> None:
        self._service = service
        self.dead_letter_topic = dead_letter_topic
        self._policy = policy or RetryPolicy()
        self._logs: dict[str, list[WireMessage]] = defaultdict(list)
        self._committed: dict[tuple[str, str], int] = defaultdict(int)
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        for topic in topics:
            self._logs.setdefault(topic, [])

    async def publish(self, topic: str, event: Event) -> None:
        await self.publish_raw(topic, encode(event, source=self._service))
        metrics.PUBLISHED.labels(self._service, topic).inc()

    async def publish_many(self, topic: str, events: Sequence[Event]) -> None:
        for message in encode_all(events, self._service):
            await self.publish_raw(topic, message)
        metrics.PUBLISHED.labels(self._service, topic).inc(len(events))

    async def publish_raw(self, topic: str, message: WireMessage) -> None:
        async with self._changed:
            self._logs[topic].append(message)
            self._changed.notify_all()

    def consumer(
        self, topics: Sequence[str], group: str, handler: Handler, *, dead_letter: bool = True
    ) -> InMemoryConsumer:
        return InMemoryConsumer(self, list(topics), group, handler, dead_letter=dead_letter)

    async def read_dead_letters(self, *, limit: int, timeout: float = 5.0) -> list[DeadLetter]:
        return [parse_dead_letter(m) for m in self._logs[self.dead_letter_topic][:limit]]

    def size(self, topic: str) -> int:
        return len(self._logs[topic])

    def records(self, topic: str) -> list[WireMessage]:
        """Every record of a topic, oldest first (tests and tools; consumers use consumer())."""
        return list(self._logs[topic])


class InMemoryConsumer:
    def __init__(
        self,
        bus: InMemoryBus,
        topics: list[str],
        group: str,
        handler: Handler,
        *,
        dead_letter: bool = True,
    ) -> None:
        self._bus = bus
        self._topics = topics
        self._group = group
        self._stopping = asyncio.Event()
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

    def _waiting(self) -> int:
        return sum(
            len(self._bus._logs[t]) - self._bus._committed[(self._group, t)] for t in self._topics
        )

    async def stop(self) -> None:
        self._stopping.set()
        async with self._bus._changed:
            self._bus._changed.notify_all()

    def _next(self) -> tuple[str, int, WireMessage] | None:
        for topic in self._topics:
            offset = self._bus._committed[(self._group, topic)]
            records = self._bus._logs[topic]
            if offset < len(records):
                return topic, offset, records[offset]
        return None

    async def run(self) -> None:
        self._ready = True
        try:
            while not self._stopping.is_set():
                async with self._bus._changed:
                    found = self._next()
                    if found is None:
                        self.progress.idle(0)
                        await self._bus._changed.wait()
                        continue
                    self.progress.waiting = self._waiting()
                topic, offset, message = found
                key = message.key.decode("utf-8", errors="replace") if message.key else None
                delivery = Delivery(topic, 0, offset, key, header_text(message.headers))
                await self._processor.process(message, delivery)
                self._bus._committed[(self._group, topic)] = offset + 1
                lag = len(self._bus._logs[topic]) - offset - 1
                metrics.CONSUMER_LAG.labels(self._bus._service, topic, self._group, "0").set(lag)
        finally:
            self._ready = False
