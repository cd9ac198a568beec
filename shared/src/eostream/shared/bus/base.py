"""The bus port, and the one error policy every consumer follows.

Adapters (Kafka, in-process) move :class:`~eostream.shared.codec.WireMessage` records; everything
about what happens to a record once it arrives lives here, so both adapters behave the same:

* undecodable or invalid payload -> dead-letter topic at once, with the reason;
* retryable error -> bounded retries with exponential backoff, then dead-letter;
* anything else (a bug, or the bus itself unreachable past its retries) -> logged with
  topic/partition/offset, and the consumer stops (raising :class:`ConsumerStopped`) without
  committing; :mod:`eostream.shared.bus.supervisor` starts it again with backoff and the record
  is redelivered.

The record's offset is committed only after it was handled or dead-lettered. Each consumer keeps a
:class:`ConsumerProgress` (records waiting, last progress) that the supervisor reads to tell a
stalled consumer from a busy one; long handlers call :func:`heartbeat` to say they move.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from eostream.shared import metrics
from eostream.shared.codec import WireMessage, decode, encode, header_text
from eostream.shared.errors import Disposition, EostreamError, classify
from eostream.shared.events import DeadLetter, Event

log = logging.getLogger(__name__)

DLQ_HEADER_PREFIX = "dlq_"


@dataclass(frozen=True)
class Delivery:
    """Where a record came from, for handlers that need it (and for logs)."""

    topic: str
    partition: int | None
    offset: int | None
    key: str | None
    headers: dict[str, str] = field(default_factory=dict)

    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


Handler = Callable[[Event, Delivery], Awaitable[None]]


class ConsumerStopped(EostreamError):
    """A handler failed in a way that is neither bad input nor transient: restart the consumer."""


@dataclass
class ConsumerProgress:
    """What a consumer did last, kept by its adapter (monotonic seconds)."""

    last_progress: float = field(default_factory=time.monotonic)
    #: records behind the end of the assigned partitions at the last poll
    waiting: int = 0
    records: int = 0
    in_flight_since: float | None = None

    def advanced(self) -> None:
        self.last_progress = time.monotonic()

    def idle(self, waiting: int) -> None:
        """A poll that found ``waiting`` records behind; nothing waiting counts as progress."""
        self.waiting = waiting
        if waiting == 0:
            self.advanced()


_handling: contextvars.ContextVar[ConsumerProgress | None] = contextvars.ContextVar(
    "eostream_handling", default=None
)


def heartbeat() -> None:
    """Tell the consumer whose record is being handled that the handler is still moving.

    For handlers that take longer than the stall time (a training run): call it from the handler
    or from the thread it started with ``asyncio.to_thread`` (which copies the context). Outside a
    handler it does nothing.
    """
    progress = _handling.get()
    if progress is not None:
        progress.advanced()


#: Largest value a dead letter keeps whole (see eostream.shared.deadletters.MAX_VALUE_BYTES).
DEAD_LETTER_MAX_VALUE_BYTES = 256 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_seconds: float = 0.5
    backoff_max_seconds: float = 10.0
    #: a dead letter keeps an excerpt of a value larger than this, and its original size
    dead_letter_max_value_bytes: int = DEAD_LETTER_MAX_VALUE_BYTES

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempt - 1)))


class Consumer(Protocol):
    async def run(self) -> None:
        """Consume until :meth:`stop` is called; raises ConsumerStopped on a fatal error."""

    async def stop(self) -> None:
        """Stop taking records, finish the one in flight, commit, close."""

    @property
    def ready(self) -> bool: ...

    @property
    def progress(self) -> ConsumerProgress: ...


class Bus(Protocol):
    """Publish events and subscribe handlers. ``start`` before use, ``close`` at the end."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ensure_topics(self, topics: Iterable[str]) -> None: ...

    async def publish(self, topic: str, event: Event) -> None: ...

    async def publish_many(self, topic: str, events: Sequence[Event]) -> None: ...

    async def publish_raw(self, topic: str, message: WireMessage) -> None:
        """Publish bytes as they are (tests and tools; services publish events)."""

    def consumer(
        self, topics: Sequence[str], group: str, handler: Handler, *, dead_letter: bool = True
    ) -> Consumer:
        """A consumer of ``topics`` in ``group``. ``dead_letter=False`` makes a follower that
        only watches (a client waiting for its answer, in a group of its own that reads the
        topics' history): a record it cannot use is skipped, never dead-lettered, since the
        services' own consumers dead-letter it once and a follower per request would copy it to
        the dead-letter topic again each time."""
        ...

    async def read_dead_letters(self, *, limit: int, timeout: float = 5.0) -> list[DeadLetter]:
        """Read the dead-letter topic from the start (operators and tests)."""


def dead_letter_message(
    message: WireMessage,
    delivery: Delivery,
    *,
    reason: str,
    error_type: str,
    service: str,
    attempts: int,
    max_value_bytes: int = DEAD_LETTER_MAX_VALUE_BYTES,
) -> WireMessage:
    """The original bytes, untouched, with the reason and origin in ``dlq_*`` headers; a value
    over ``max_value_bytes`` is kept as an excerpt with its original size
    (:func:`eostream.shared.deadletters.excerpt`)."""
    from eostream.shared.deadletters import excerpt  # it imports this module

    kept, size_headers = excerpt(message.value, max_value_bytes)
    headers = dict(message.headers)
    extra = {
        "reason": reason[:2000],
        "error_type": error_type,
        "service": service,
        "original_topic": delivery.topic,
        "original_partition": "" if delivery.partition is None else str(delivery.partition),
        "original_offset": "" if delivery.offset is None else str(delivery.offset),
        "attempts": str(attempts),
        "time": datetime.now(UTC).isoformat(),
    }
    for name, value in extra.items():
        headers[DLQ_HEADER_PREFIX + name] = value.encode("utf-8")
    headers.update(size_headers)
    return WireMessage(key=message.key, value=kept, headers=headers)


def parse_dead_letter(message: WireMessage) -> DeadLetter:
    text = header_text(message.headers)

    def take(name: str) -> str:
        return text.get(DLQ_HEADER_PREFIX + name, "")

    partition, offset = take("original_partition"), take("original_offset")
    return DeadLetter(
        reason=take("reason"),
        error_type=take("error_type"),
        service=take("service"),
        original_topic=take("original_topic"),
        original_partition=int(partition) if partition else None,
        original_offset=int(offset) if offset else None,
        original_key=message.key.decode("utf-8", errors="replace") if message.key else None,
        original_headers={k: v for k, v in text.items() if not k.startswith(DLQ_HEADER_PREFIX)},
        original_value=message.value,
        attempts=int(take("attempts") or 1),
        time=datetime.fromisoformat(take("time")) if take("time") else datetime.now(UTC),
    )


class RecordProcessor:
    """Decode one record, run the handler under the error policy, dead-letter when due (skip,
    for a follower: ``dead_letter=None``)."""

    def __init__(
        self,
        *,
        service: str,
        handler: Handler,
        policy: RetryPolicy,
        dead_letter: Callable[[WireMessage], Awaitable[None]] | None,
        progress: ConsumerProgress | None = None,
        topics: Iterable[str] = (),
    ) -> None:
        # every outcome of every topic exported from the start, at 0: see metrics.at_zero
        metrics.at_zero(metrics.CONSUMED, [service], topics, metrics.CONSUMED_OUTCOMES)
        self._service = service
        self._handler = handler
        self._policy = policy
        self._dead_letter = dead_letter
        self.progress = progress or ConsumerProgress()

    async def process(self, message: WireMessage, delivery: Delivery) -> None:
        """Return when the record may be committed; raise ConsumerStopped when it may not."""
        progress = self.progress
        progress.in_flight_since = time.monotonic()
        token = _handling.set(progress)
        try:
            await self._process(message, delivery)
        finally:
            _handling.reset(token)
            progress.in_flight_since = None
        progress.records += 1
        progress.advanced()

    async def _process(self, message: WireMessage, delivery: Delivery) -> None:
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                event = decode(message)
                await self._handler(event, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                disposition = classify(exc)
                if disposition is Disposition.RETRY and attempt <= self._policy.max_retries:
                    delay = self._policy.delay(attempt)
                    log.warning(
                        "%s: retryable error (attempt %d of %d), retrying in %.1fs: %s",
                        delivery.where(),
                        attempt,
                        self._policy.max_retries + 1,
                        delay,
                        exc,
                    )
                    metrics.CONSUMED.labels(self._service, delivery.topic, "retried").inc()
                    await asyncio.sleep(delay)
                    continue
                if disposition is Disposition.STOP:
                    log.error(
                        "%s: handler failed; stopping the consumer so it can be restarted",
                        delivery.where(),
                        exc_info=exc,
                    )
                    metrics.CONSUMED.labels(self._service, delivery.topic, "error").inc()
                    raise ConsumerStopped(
                        f"{delivery.where()}: {type(exc).__name__}: {exc}"
                    ) from exc
                reason = str(exc) or type(exc).__name__
                if disposition is Disposition.RETRY:
                    reason = f"gave up after {attempt} attempts: {reason}"
                if self._dead_letter is None:  # a follower: the services dead-letter it
                    log.debug("%s: skipped (%s): %s", delivery.where(), type(exc).__name__, reason)
                    return
                await self._dead_letter(
                    dead_letter_message(
                        message,
                        delivery,
                        reason=reason,
                        error_type=type(exc).__name__,
                        service=self._service,
                        attempts=attempt,
                        max_value_bytes=self._policy.dead_letter_max_value_bytes,
                    )
                )
                log.warning(
                    "%s: dead-lettered (%s): %s", delivery.where(), type(exc).__name__, reason
                )
                metrics.DEAD_LETTERS.labels(self._service, delivery.topic, type(exc).__name__).inc()
                metrics.CONSUMED.labels(self._service, delivery.topic, "dead_letter").inc()
                return
            else:
                metrics.CONSUMED.labels(self._service, delivery.topic, "ok").inc()
                metrics.HANDLER_DURATION.labels(self._service, delivery.topic).observe(
                    time.perf_counter() - started
                )
                age = (datetime.now(UTC) - event.time).total_seconds()
                metrics.EVENT_AGE.labels(self._service, delivery.topic).observe(max(0.0, age))
                return


def encode_all(events: Sequence[Event], service: str) -> list[WireMessage]:
    return [encode(event, source=service) for event in events]
