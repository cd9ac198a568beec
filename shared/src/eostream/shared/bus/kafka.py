"""The Kafka adapter of the bus (aiokafka). aiokafka is imported nowhere else.

Delivery is at least once: offsets are committed by hand after the handler succeeded (or the
record was dead-lettered), on every rebalance for the partitions being revoked, and on stop. A
record may therefore arrive twice after a crash; handlers are idempotent on the event id or on
the event's natural key. This module is the bus (producer, topics, reading a topic whole);
:mod:`.kafka_consumer` is the consumer and :mod:`.kafka_retry` the publish retry policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownProducerId,
)

from eostream.shared import metrics
from eostream.shared.bus.base import Handler, RetryPolicy, encode_all, parse_dead_letter
from eostream.shared.bus.kafka_consumer import COMMIT_INTERVAL_SECONDS, KafkaConsumer, wire_message
from eostream.shared.bus.kafka_retry import (
    PUBLISH_BACKOFF_MAX_SECONDS,
    PUBLISH_BACKOFF_SECONDS,
    publish_retrying,
    transient,
)
from eostream.shared.codec import WireMessage, encode
from eostream.shared.errors import ConfigError
from eostream.shared.events import DeadLetter, Event
from eostream.shared.settings import KafkaSettings

__all__ = [
    "COMMIT_INTERVAL_SECONDS",
    "PUBLISH_BACKOFF_MAX_SECONDS",
    "PUBLISH_BACKOFF_SECONDS",
    "KafkaBus",
    "KafkaConsumer",
    "transient",
]

log = logging.getLogger(__name__)

# Errors after which an idempotent producer is dead for good: aiokafka's sender task stops and
# every later send raises the same error. Seen after a broker restart that lost the producer's
# sequence state (OutOfOrderSequenceNumber). A new producer, with a new producer id, recovers.
PRODUCER_STATE_ERRORS = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


class ProducerReplaced(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The producer lost its idempotence state and was replaced: send the batch again."""

    retriable = True


class KafkaBus:
    def __init__(self, settings: KafkaSettings, *, service: str) -> None:
        self._settings = settings
        self._service = service
        self.dead_letter_topic = settings.dead_letter_topic
        self._prefix = settings.topic_prefix
        self._producer: AIOKafkaProducer | None = None
        # one replacement at a time: concurrent sends that all saw the producer die replace it
        # once, and a late one never stops the fresh producer (see _replace_producer)
        self._replacing = asyncio.Lock()
        self._started = False
        self._known_topics: set[str] = set()
        self._policy = RetryPolicy(
            max_retries=settings.max_retries,
            backoff_seconds=settings.retry_backoff_seconds,
            backoff_max_seconds=settings.retry_backoff_max_seconds,
            dead_letter_max_value_bytes=settings.dead_letter_max_value_bytes,
        )

    @property
    def settings(self) -> KafkaSettings:
        return self._settings

    def physical(self, topic: str) -> str:
        """The broker's name of a topic: the configured prefix, then the name services use."""
        return self._prefix + topic

    def logical(self, topic: str) -> str:
        """The name services use of a broker topic (the inverse of :meth:`physical`)."""
        return topic.removeprefix(self._prefix)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-{self._service}",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=self._settings.request_timeout_ms,
        )

    async def start(self) -> None:
        producer = self._new_producer()
        try:
            await producer.start()
        except KafkaConnectionError:
            await producer.stop()
            raise ConfigError(
                f"cannot reach Kafka at {self._settings.bootstrap_servers}: is the broker running, "
                "and is KAFKA__BOOTSTRAP_SERVERS right?"
            ) from None
        self._producer = producer
        self._started = True
        await self.ensure_topics([self.dead_letter_topic])

    async def close(self) -> None:
        async with self._replacing:  # no replacement started after this one is stopped
            self._started = False
            producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _live_producer(self) -> AIOKafkaProducer:
        """The producer, started again if an earlier one died of a producer-state error."""
        producer = self._producer
        if producer is not None:
            return producer
        async with self._replacing:  # the first send after a replacement starts the new one
            if self._producer is None:
                if not self._started:
                    raise RuntimeError("KafkaBus.start() must be awaited before publishing")
                producer = self._new_producer()
                try:
                    await producer.start()  # a broker still down raises a transient error: retried
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def _replace_producer(self, dead: AIOKafkaProducer, exc: KafkaError) -> None:
        """Retire ``dead``, the producer a send failed on, unless it is retired already:
        concurrent sends on it all fail, and only the first replaces it."""
        async with self._replacing:
            current = self._producer is dead
            if current:
                self._producer = None
        if not current:
            return  # replaced by another send (or the bus is closed): nothing to do
        log.warning(
            "the %s producer lost its idempotence state (%s: %s); starting a new one",
            self._service,
            type(exc).__name__,
            exc,
        )
        metrics.PRODUCER_REPLACED.labels(self._service).inc()
        try:
            await dead.stop()
        except Exception as stop_error:
            log.debug("stopping the dead producer: %s", stop_error)

    def _admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-{self._service}-admin",
            request_timeout_ms=self._settings.request_timeout_ms,
        )

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics that do not exist yet (idempotent, safe to race)."""
        wanted = {self.physical(t) for t in topics} - self._known_topics
        if not wanted:
            return
        admin = self._admin()
        await admin.start()
        try:
            missing = wanted - set(await admin.list_topics())
            if missing:
                new = [
                    NewTopic(t, self._settings.partitions, self._settings.replication_factor)
                    for t in sorted(missing)
                ]
                try:
                    await admin.create_topics(new)
                except TopicAlreadyExistsError:
                    pass
                await self._wait_for_topics(admin, missing)
        finally:
            await admin.close()
        self._known_topics |= wanted

    @staticmethod
    async def _wait_for_topics(admin: AIOKafkaAdminClient, topics: set[str]) -> None:
        for _ in range(50):
            if topics <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)

    async def publish(self, topic: str, event: Event) -> None:
        await self.publish_raw(topic, encode(event, source=self._service))
        metrics.PUBLISHED.labels(self._service, topic).inc()

    async def publish_many(self, topic: str, events: Sequence[Event]) -> None:
        """Publish a batch and wait until the broker acknowledged every record."""
        messages = encode_all(events, self._service)

        async def send(producer: AIOKafkaProducer) -> None:
            futures = [
                await producer.send(
                    self.physical(topic), m.value, key=m.key, headers=list(m.headers.items())
                )
                for m in messages
            ]
            await asyncio.gather(*futures)

        await self._retrying(topic, send)
        metrics.PUBLISHED.labels(self._service, topic).inc(len(events))

    async def publish_raw(self, topic: str, message: WireMessage) -> None:
        async def send(producer: AIOKafkaProducer) -> None:
            await producer.send_and_wait(
                self.physical(topic),
                message.value,
                key=message.key,
                headers=list(message.headers.items()),
            )

        await self._retrying(topic, send)

    async def _retrying(
        self, topic: str, send: Callable[[AIOKafkaProducer], Awaitable[None]]
    ) -> None:
        async def send_on_a_live_producer() -> None:
            await self.ensure_topics([topic])
            producer = await self._live_producer()
            try:
                await send(producer)
            except PRODUCER_STATE_ERRORS as exc:
                # The whole batch goes again on the new producer; records the old one had
                # written are duplicates that consumers drop by event id.
                await self._replace_producer(producer, exc)
                raise ProducerReplaced(f"{type(exc).__name__}: {exc}") from exc

        await publish_retrying(
            send_on_a_live_producer,
            topic=topic,
            service=self._service,
            retry_seconds=self._settings.publish_retry_seconds,
        )

    def consumer(
        self, topics: Sequence[str], group: str, handler: Handler, *, dead_letter: bool = True
    ) -> KafkaConsumer:
        return KafkaConsumer(self, list(topics), group, handler, dead_letter=dead_letter)

    async def read_dead_letters(self, *, limit: int, timeout: float = 5.0) -> list[DeadLetter]:
        """Read the dead-letter topic from the beginning, without a group (nothing committed)."""
        records = await self.read_topic(self.dead_letter_topic, timeout=timeout)
        found = [parse_dead_letter(m) for m in records]
        found.sort(key=lambda d: (d.time, d.original_partition or 0, d.original_offset or 0))
        return found[:limit]

    @contextlib.asynccontextmanager
    async def _groupless(
        self, topic: str, timeout: float
    ) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
        """A consumer of ``topic`` without a group (aiokafka assigns every partition, nothing is
        committed), and its partitions once assigned (none after ``timeout``)."""
        await self.ensure_topics([topic])
        consumer = AIOKafkaConsumer(
            self.physical(topic),
            bootstrap_servers=self._settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            # the partitions come with a metadata update in the background: on busy cores that
            # took longer than the 5 s once waited here, and the read answered "no records"
            deadline = asyncio.get_running_loop().time() + timeout
            while not consumer.assignment() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            yield consumer, sorted(consumer.assignment())
        finally:
            await consumer.stop()

    async def end_offsets(self, topic: str, *, timeout: float = 20.0) -> dict[int, int]:
        """Where each partition of ``topic`` ends now (for :meth:`read_topic`'s ``start``: what
        comes after this moment)."""
        async with self._groupless(topic, timeout) as (consumer, tps):
            ends = await consumer.end_offsets(tps) if tps else {}
            return {tp.partition: offset for tp, offset in ends.items()}

    async def read_topic(
        self, topic: str, *, timeout: float = 20.0, start: dict[int, int] | None = None
    ) -> list[WireMessage]:
        """Every record of ``topic`` from the beginning (or from ``start``'s offset of each
        partition, :meth:`end_offsets`) to its end now, without a group (nothing is committed):
        for operators' tools and tests, not for services."""
        async with self._groupless(topic, timeout) as (consumer, tps):
            if not tps:
                return []
            if start is None:
                await consumer.seek_to_beginning(*tps)
            else:
                for tp in tps:
                    consumer.seek(tp, start.get(tp.partition, 0))
            ends = await consumer.end_offsets(tps)
            found: list[WireMessage] = []
            deadline = asyncio.get_running_loop().time() + timeout
            while asyncio.get_running_loop().time() < deadline:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    found.extend(wire_message(r) for r in records)
            return found
