"""The Kafka consumer of the bus: poll, hand each record to the shared RecordProcessor, commit
as records finish, on rebalance and on stop (ADR 0003, ADR 0008)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, KafkaError

from eostream.shared import metrics
from eostream.shared.bus.base import ConsumerProgress, Delivery, Handler, RecordProcessor
from eostream.shared.codec import WireMessage, header_text
from eostream.shared.errors import ConfigError

if TYPE_CHECKING:
    from eostream.shared.bus.kafka import KafkaBus

log = logging.getLogger(__name__)

#: Within a batch, offsets are committed at most this often (and always at its end).
COMMIT_INTERVAL_SECONDS = 1.0


def wire_message(record: object) -> WireMessage:
    """An aiokafka record as the codec's message."""
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


def has_coordinator(kafka: AIOKafkaConsumer) -> bool:
    """Whether ``kafka`` knows its group's coordinator: the broker answers for the group. It
    forgets it within seconds of the broker going out of reach, and keeps its partitions and
    their last known ends meanwhile (so the lag reads 0 and the consumer looks idle). aiokafka
    has no public word for it; without the attribute (another version), True: no alarm."""
    coordinator = getattr(kafka, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "coordinator_id"):
        return True
    return coordinator.coordinator_id is not None


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
    def __init__(
        self,
        bus: KafkaBus,
        topics: list[str],
        group: str,
        handler: Handler,
        *,
        dead_letter: bool = True,
    ) -> None:
        self._bus = bus
        self._topics = topics
        self.group = group
        self._stopping = asyncio.Event()
        self._ready = False
        self._kafka: AIOKafkaConsumer | None = None
        self._pending: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}  # next offset to handle, per partition
        self.joined = False  # a rebalance gave this member its partitions (maybe none)
        #: the lag series this consumer set (service, topic, group, partition)
        self._lag_series: set[tuple[str, str, str, str]] = set()
        self._committed_at = 0.0
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
        connected = metrics.CONSUMER_CONNECTED.labels(self._bus._service, self.group)
        try:
            while not self._stopping.is_set():
                connected.set(1 if has_coordinator(kafka) else 0)
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
                            header_text(dict(wire_message(record).headers)),
                        )
                        await self._processor.process(wire_message(record), delivery)
                        self._pending[tp] = self._next[tp] = record.offset + 1
                        if loop.time() - self._committed_at >= COMMIT_INTERVAL_SECONDS:
                            # slow records (a scene, a training): commit as they finish, so a
                            # crash or a rebalance mid-batch redelivers little
                            await self.commit_pending()
                await self.commit_pending()
                lag = await self._lag(kafka)
                # without its coordinator the broker is out of reach: the partition ends it
                # knows are stale, so "nothing waiting" would be a guess, not progress
                reachable = has_coordinator(kafka)
                connected.set(1 if reachable else 0)
                if lag is not None and reachable:
                    self.progress.idle(lag)
        finally:
            self._ready = False
            await self.commit_pending()
            self._kafka = None
            await _close(kafka, self.group)
            # only a running consumer says whether it reaches its broker: one that ended (a
            # handler's bug, a crash loop) is EostreamConsumerNotRunning's, not "disconnected"
            metrics.CONSUMER_CONNECTED.remove(self._bus._service, self.group)
            if self._stopping.is_set():  # stopped on purpose: its partitions are not its now
                for labels in self._lag_series:
                    metrics.CONSUMER_LAG.remove(*labels)

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
            labels = (
                self._bus._service,
                self._bus.logical(tp.topic),
                self.group,
                str(tp.partition),
            )
            metrics.CONSUMER_LAG.labels(*labels).set(lag)
            self._lag_series.add(labels)
            if total is not None:
                total += lag
        return total
