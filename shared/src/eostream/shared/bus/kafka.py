"""The Kafka adapter of the bus (aiokafka). aiokafka is imported nowhere else.

Delivery is at least once: offsets are committed by hand after the handler succeeded (or the
record was dead-lettered), on every rebalance for the partitions being revoked, and on stop. A
record may therefore arrive twice after a crash; handlers are idempotent on the event id or on
the event's natural key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

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
from eostream.shared.errors import BusUnavailableError, ConfigError
from eostream.shared.events import DeadLetter, Event
from eostream.shared.settings import KafkaSettings

log = logging.getLogger(__name__)

PUBLISH_BACKOFF_SECONDS = 0.5
#: Within a batch, offsets are committed at most this often (and always at its end).
COMMIT_INTERVAL_SECONDS = 1.0
PUBLISH_BACKOFF_MAX_SECONDS = 5.0


def transient(exc: BaseException) -> bool:
    """A broker that is restarting, unreachable or electing a leader: worth trying again."""
    return isinstance(exc, KafkaError) and (
        bool(getattr(exc, "retriable", False))
        or isinstance(exc, KafkaConnectionError | KafkaTimeoutError)
    )


class KafkaBus:
    def __init__(self, settings: KafkaSettings, *, service: str) -> None:
        self._settings = settings
        self._service = service
        self.dead_letter_topic = settings.dead_letter_topic
        self._prefix = settings.topic_prefix
        self._producer: AIOKafkaProducer | None = None
        self._known_topics: set[str] = set()
        self._policy = RetryPolicy(
            max_retries=settings.max_retries,
            backoff_seconds=settings.retry_backoff_seconds,
            backoff_max_seconds=settings.retry_backoff_max_seconds,
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

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-{self._service}",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=self._settings.request_timeout_ms,
        )
        try:
            await producer.start()
        except KafkaConnectionError:
            await producer.stop()
            raise ConfigError(
                f"cannot reach Kafka at {self._settings.bootstrap_servers}: is the broker running, "
                "and is KAFKA__BOOTSTRAP_SERVERS right?"
            ) from None
        self._producer = producer
        await self.ensure_topics([self.dead_letter_topic])

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

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

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaBus.start() must be awaited before publishing")
        return self._producer

    async def publish(self, topic: str, event: Event) -> None:
        await self.publish_raw(topic, encode(event, source=self._service))
        metrics.PUBLISHED.labels(self._service, topic).inc()

    async def publish_many(self, topic: str, events: Sequence[Event]) -> None:
        """Publish a batch and wait until the broker acknowledged every record."""
        messages = encode_all(events, self._service)

        async def send() -> None:
            await self.ensure_topics([topic])
            producer = self._require_producer()
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
        async def send() -> None:
            await self.ensure_topics([topic])
            await self._require_producer().send_and_wait(
                self.physical(topic),
                message.value,
                key=message.key,
                headers=list(message.headers.items()),
            )

        await self._retrying(topic, send)

    async def _retrying(self, topic: str, send: Callable[[], Awaitable[None]]) -> None:
        """Run ``send`` until the broker takes it, through a restart or a leader election.

        A batch half taken before a failure is sent again whole: consumers drop the duplicates by
        event id. Past ``publish_retry_seconds`` it raises :class:`BusUnavailableError`, which
        stops a consumer without committing (it is restarted and the record redelivered).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.publish_retry_seconds
        delay = PUBLISH_BACKOFF_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                await send()
            except (KafkaError, OSError) as exc:
                if not (transient(exc) or isinstance(exc, OSError)):
                    raise
                if loop.time() + delay > deadline:
                    raise BusUnavailableError(
                        f"the broker did not take a record for {topic} within "
                        f"{self._settings.publish_retry_seconds:.0f}s ({attempt} attempts): "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                log.warning(
                    "publishing to %s failed (attempt %d, %s: %s); retrying in %.1fs",
                    topic,
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                metrics.PUBLISH_RETRIES.labels(self._service, topic).inc()
                await asyncio.sleep(delay)
                delay = min(PUBLISH_BACKOFF_MAX_SECONDS, delay * 2)
            else:
                return

    def consumer(self, topics: Sequence[str], group: str, handler: Handler) -> KafkaConsumer:
        return KafkaConsumer(self, list(topics), group, handler)

    async def read_dead_letters(self, *, limit: int, timeout: float = 5.0) -> list[DeadLetter]:
        """Read the dead-letter topic from the beginning, without a group (nothing committed)."""
        records = await self.read_topic(self.dead_letter_topic, timeout=timeout)
        found = [parse_dead_letter(m) for m in records]
        found.sort(key=lambda d: (d.time, d.original_partition or 0, d.original_offset or 0))
        return found[:limit]

    async def read_topic(self, topic: str, *, timeout: float = 20.0) -> list[WireMessage]:
        """Every record of ``topic`` from the beginning to its end now, without a group (nothing
        is committed): for operators' tools and tests, not for services."""
        await self.ensure_topics([topic])
        name = self.physical(topic)
        # No group: aiokafka assigns every partition of the topic, and nothing is committed.
        consumer = AIOKafkaConsumer(
            name,
            bootstrap_servers=self._settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            for _ in range(100):
                if consumer.assignment():
                    break
                await asyncio.sleep(0.05)
            tps = sorted(consumer.assignment())
            if not tps:
                return []
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            found: list[WireMessage] = []
            deadline = asyncio.get_running_loop().time() + timeout
            while asyncio.get_running_loop().time() < deadline:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    found.extend(_wire(r) for r in records)
            return found
        finally:
            await consumer.stop()


def _wire(record: object) -> WireMessage:
    key = getattr(record, "key", None)
    value = getattr(record, "value", None) or b""
    headers = {name: (raw or b"") for name, raw in (getattr(record, "headers", None) or [])}
    return WireMessage(key=key, value=value, headers=headers)


async def _close(kafka: AIOKafkaConsumer, group: str) -> None:
    """Stop an aiokafka consumer, even with the broker gone.

    With the broker down, aiokafka 0.14's ``stop`` re-raises the CancelledError of its own fetch
    task; left to propagate, it would look like a cancellation of the caller and end the
    supervisor too. Only a real cancellation of this task goes on.
    """
    try:
        await kafka.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("%s: the consumer closed uncleanly (broker unreachable)", group)
    except KafkaError as exc:
        log.warning("%s: the consumer closed uncleanly: %s", group, exc)


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._consumer.commit_pending(revoked)
        self._consumer.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._consumer.joined = True
        log.info(
            "%s: assigned %s",
            self._consumer.group,
            sorted(f"{t.topic}[{t.partition}]" for t in assigned),
        )


class KafkaConsumer:
    def __init__(self, bus: KafkaBus, topics: list[str], group: str, handler: Handler) -> None:
        self._bus = bus
        self._topics = topics
        self.group = group
        self._stopping = asyncio.Event()
        self._ready = False
        self._kafka: AIOKafkaConsumer | None = None
        self._pending: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}  # next offset to handle, per partition
        self.joined = False  # a rebalance gave this member its partitions (maybe none)
        self._committed_at = 0.0
        self._processor = RecordProcessor(
            service=bus._service,
            handler=handler,
            policy=bus._policy,
            dead_letter=lambda m: bus.publish_raw(bus.dead_letter_topic, m),
        )

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def progress(self) -> ConsumerProgress:
        return self._processor.progress

    async def stop(self) -> None:
        self._stopping.set()

    def forget(self, revoked: Iterable[TopicPartition]) -> None:
        """Partitions handed to another member: their lag is that member's to report."""
        for tp in revoked:
            self._next.pop(tp, None)
            metrics.CONSUMER_LAG.labels(
                self._bus._service, self._bus.logical(tp.topic), self.group, str(tp.partition)
            ).set(0)

    async def commit_pending(self, only: Iterable[TopicPartition] | None = None) -> None:
        if self._kafka is None or not self._pending:
            return
        chosen = set(only) if only is not None else set(self._pending)
        offsets = {tp: off for tp, off in self._pending.items() if tp in chosen}
        if not offsets:
            return
        self._committed_at = asyncio.get_running_loop().time()
        try:
            await self._kafka.commit(offsets)
        except KafkaError as exc:
            # The group moved on (rebalance): those records will be redelivered; duplicates are
            # absorbed by idempotent handlers.
            log.warning("%s: commit failed (%s); records may be redelivered", self.group, exc)
        for tp in offsets:
            self._pending.pop(tp, None)

    async def run(self) -> None:
        settings = self._bus.settings
        await self._bus.ensure_topics(self._topics)
        kafka = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=self._bus.physical(self.group),  # a namespace covers groups too
            client_id=f"{settings.client_id}-{self._bus._service}",
            enable_auto_commit=False,
            auto_offset_reset=settings.new_group_offset,
            max_poll_records=settings.batch_size,
            request_timeout_ms=max(settings.request_timeout_ms, 40000),
            session_timeout_ms=10000,
            heartbeat_interval_ms=3000,
            max_poll_interval_ms=1800000,
        )
        kafka.subscribe(
            [self._bus.physical(t) for t in self._topics], listener=_CommitOnRevoke(self)
        )
        try:
            await kafka.start()
        except KafkaConnectionError:
            await kafka.stop()
            raise ConfigError(f"cannot reach Kafka at {settings.bootstrap_servers}") from None
        self._kafka = kafka
        self._ready = True
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                batch = await kafka.getmany(timeout_ms=500, max_records=settings.batch_size)
                for tp, records in batch.items():
                    self._next[tp] = records[0].offset
                if batch:  # what waits now, the fetched records included (a stuck handler shows)
                    lag = await self._lag(kafka)
                    fetched = sum(len(records) for records in batch.values())
                    self.progress.waiting = max(fetched, lag or 0)
                for tp, records in batch.items():
                    for record in records:
                        if self._stopping.is_set():
                            break
                        delivery = Delivery(
                            self._bus.logical(tp.topic),
                            tp.partition,
                            record.offset,
                            record.key.decode("utf-8", errors="replace") if record.key else None,
                            header_text(dict(_wire(record).headers)),
                        )
                        await self._processor.process(_wire(record), delivery)
                        self._pending[tp] = self._next[tp] = record.offset + 1
                        if loop.time() - self._committed_at >= COMMIT_INTERVAL_SECONDS:
                            # slow records (a scene, a training): commit as they finish, so a
                            # crash or a rebalance mid-batch redelivers little
                            await self.commit_pending()
                await self.commit_pending()
                lag = await self._lag(kafka)
                if lag is not None:
                    self.progress.idle(lag)
        finally:
            self._ready = False
            await self.commit_pending()
            self._kafka = None
            await _close(kafka, self.group)

    async def _lag(self, kafka: AIOKafkaConsumer) -> int | None:
        """Records behind the end of each assigned partition (exported per partition); the sum,
        or None while a partition's end is not known yet (before its first fetch)."""
        total: int | None = 0
        assigned = kafka.assignment()
        if not assigned:  # not in the group yet, or in it with no partition (an idle replica)
            return 0 if self.joined else None
        for tp in assigned:
            highwater = kafka.highwater(tp)
            if highwater is None:
                total = None
                continue
            if tp not in self._next:
                try:
                    self._next[tp] = await kafka.position(tp)
                except KafkaError:  # revoked meanwhile, or no position yet: next poll
                    total = None
                    continue
            lag = max(0, highwater - self._next[tp])
            metrics.CONSUMER_LAG.labels(
                self._bus._service, self._bus.logical(tp.topic), self.group, str(tp.partition)
            ).set(lag)
            if total is not None:
                total += lag
        return total
