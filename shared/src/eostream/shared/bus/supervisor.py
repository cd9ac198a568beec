"""Consumers that come back: the one way every service runs its bus consumers.

A consumer task that ends while its service is not stopping (a handler bug, the broker gone for
longer than a publish retries, or no reason at all) is a zombie unless someone notices: the
process stays up, nothing is consumed, and no orchestrator can tell. :class:`SupervisedConsumer`
starts a fresh consumer from its factory with exponential backoff instead; the record in flight
was not committed, so it is redelivered.

Two checks feed the operations endpoints:

* readiness: every consumer is running (not restarting, not stopped);
* liveness: no consumer is *stalled* (records waiting, no progress for ``stall_seconds``) or
  crash-looping (``crash_loop_restarts`` restarts in a row without a record handled). Failing
  liveness asks the orchestrator to restart the whole process, the last resort.

Metrics per group: ``eostream_consumer_up``, ``eostream_consumer_stalled``,
``eostream_consumer_restarts_total``, ``eostream_consumer_last_progress_timestamp_seconds``
(and the adapters' per-partition ``eostream_consumer_lag_messages``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from enum import Enum

from eostream.shared import metrics
from eostream.shared.bus.base import Consumer, ConsumerProgress
from eostream.shared.settings import ConsumerSupervision

log = logging.getLogger(__name__)

ConsumerFactory = Callable[[], Consumer]
#: How often the gauges are refreshed while a consumer runs.
WATCH_SECONDS = 5.0


class State(Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


class SupervisedConsumer:
    """Runs one consumer group's consumer and starts it again whenever it ends unasked."""

    def __init__(
        self,
        factory: ConsumerFactory,
        *,
        service: str,
        group: str,
        supervision: ConsumerSupervision | None = None,
    ) -> None:
        self._factory = factory
        self.service = service
        self.group = group
        self._config = supervision or ConsumerSupervision()
        self._stopping = asyncio.Event()
        self._consumer: Consumer | None = None
        self.state = State.STARTING
        self.restarts = 0
        self.failures_in_a_row = 0
        self.last_error = ""
        self._started_at = time.monotonic()
        metrics.CONSUMER_UP.labels(service, group).set(0)
        metrics.CONSUMER_STALLED.labels(service, group).set(0)
        metrics.CONSUMER_RESTARTS.labels(service, group)  # the series exists from 0

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until :meth:`stop`: run the consumer, and a new one each time it ends on its own."""
        watch = asyncio.create_task(self._watch(), name=f"{self.group}-watch")
        try:
            while not self._stopping.is_set():
                consumer = self._factory()
                self._consumer = consumer
                self._started_at = time.monotonic()
                self.state = State.RUNNING
                metrics.CONSUMER_UP.labels(self.service, self.group).set(1)
                error: BaseException | None = None
                try:
                    await consumer.run()
                except asyncio.CancelledError as exc:
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise  # this supervisor is being cancelled
                    error = exc  # a library's stray cancellation: not ours to obey
                except Exception as exc:
                    error = exc
                if self._stopping.is_set():
                    break
                self._ended(consumer, error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._delay())
        finally:
            watch.cancel()
            self.state = State.STOPPED
            if self._stopping.is_set():
                # stopped on purpose (the service stops, or an ingest replica stands by): no
                # series, where a 0 kept "consumer not running" firing on a healthy standby
                # (remove() of a series that is not there does nothing)
                for gauge in (
                    metrics.CONSUMER_UP,
                    metrics.CONSUMER_STALLED,
                    metrics.CONSUMER_PROGRESS,
                ):
                    gauge.remove(self.service, self.group)
            else:
                metrics.CONSUMER_UP.labels(self.service, self.group).set(0)
                metrics.CONSUMER_STALLED.labels(self.service, self.group).set(0)

    def _moved(self, consumer: Consumer) -> bool:
        """Whether this run of the consumer made progress (a record done, or a poll that found
        nothing waiting): a restart after that is not part of a crash loop."""
        return consumer.progress.last_progress > self._started_at

    def _ended(self, consumer: Consumer, error: BaseException | None) -> None:
        self.failures_in_a_row = 1 if self._moved(consumer) else self.failures_in_a_row + 1
        self.restarts += 1
        self.state = State.RESTARTING
        self.last_error = (
            f"{type(error).__name__}: {error}"[:300] if error else "the consumer returned"
        )
        metrics.CONSUMER_UP.labels(self.service, self.group).set(0)
        metrics.CONSUMER_RESTARTS.labels(self.service, self.group).inc()
        log.error(
            "%s: consumer of group %s ended (%s); starting it again in %.1fs (restart %d, "
            "%d in a row)",
            self.service,
            self.group,
            self.last_error,
            self._delay(),
            self.restarts,
            self.failures_in_a_row,
            exc_info=error,
        )

    def _delay(self) -> float:
        c = self._config
        return float(
            min(
                c.restart_backoff_max_seconds,
                c.restart_backoff_seconds * 2 ** max(0, self.failures_in_a_row - 1),
            )
        )

    async def _watch(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(WATCH_SECONDS)

    async def stop(self) -> None:
        """Stop the consumer (it finishes the record in flight and commits); no restart after."""
        self._stopping.set()
        if self._consumer is not None:
            await self._consumer.stop()

    # -- health --------------------------------------------------------------------------------

    @property
    def progress(self) -> ConsumerProgress | None:
        return None if self._consumer is None else self._consumer.progress

    @property
    def ready(self) -> bool:
        return self.state is State.RUNNING and self._consumer is not None and self._consumer.ready

    def stalled_for(self) -> float | None:
        """Seconds without progress while records wait, once past the stall time; else None."""
        progress = self.progress
        if progress is None or self.state is not State.RUNNING:
            return None
        if progress.waiting <= 0 and progress.in_flight_since is None:
            return None  # nothing to do, and nothing in hand
        quiet = time.monotonic() - progress.last_progress
        return quiet if quiet > self._config.stall_seconds else None

    def refresh(self) -> None:
        """Bring the gauges up to date (also done every few seconds while running)."""
        if self.state is State.STOPPED:  # a /livez probe after a stop made its series again
            return
        if self._consumer is not None and self.state is State.RUNNING:
            if self._moved(self._consumer):
                self.failures_in_a_row = 0  # back at work: the failures are behind it
        progress = self.progress
        if progress is not None:
            wall = time.time() - (time.monotonic() - progress.last_progress)
            metrics.CONSUMER_PROGRESS.labels(self.service, self.group).set(wall)
        stalled = self.stalled_for() is not None
        metrics.CONSUMER_STALLED.labels(self.service, self.group).set(1 if stalled else 0)

    def readiness(self) -> tuple[bool, str]:
        if self.ready:
            return True, f"{self.group}: consuming"
        if self.state is State.RESTARTING:
            return False, f"{self.group}: restarting after: {self.last_error}"
        return False, f"{self.group}: {self.state.value}"

    def liveness(self) -> tuple[bool, str]:
        self.refresh()
        quiet = self.stalled_for()
        if quiet is not None:
            waiting = self.progress.waiting if self.progress else 0
            return False, (
                f"{self.group}: stalled: {waiting} record(s) waiting and no progress for "
                f"{quiet:.0f}s"
            )
        if self.failures_in_a_row >= self._config.crash_loop_restarts:
            return False, (
                f"{self.group}: crash-looping ({self.failures_in_a_row} restarts in a row): "
                f"{self.last_error}"
            )
        return True, f"{self.group}: {self.state.value}"


class Consumers:
    """A service's supervised consumers, started and stopped together, with one health view."""

    def __init__(self, service: str, supervision: ConsumerSupervision | None = None) -> None:
        self.service = service
        self._supervision = supervision
        self._members: list[SupervisedConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, group: str, factory: ConsumerFactory) -> SupervisedConsumer:
        member = SupervisedConsumer(
            factory, service=self.service, group=group, supervision=self._supervision
        )
        self._members.append(member)
        return member

    @property
    def members(self) -> Sequence[SupervisedConsumer]:
        return list(self._members)

    def start(self) -> None:
        """Run every member in a task of its own (a member added later runs via :meth:`run`)."""
        self._tasks = [
            asyncio.create_task(m.run(), name=f"{self.service}:{m.group}") for m in self._members
        ]

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop every member, wait up to ``timeout`` for the records in flight, then cancel."""
        for member in self._members:
            await member.stop()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in [*done, *pending]:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception("%s: a consumer supervisor ended with an error", self.service)

    def readiness(self) -> tuple[bool, str]:
        return _combined(m.readiness() for m in self._members)

    def liveness(self) -> tuple[bool, str]:
        return _combined(m.liveness() for m in self._members)


def _combined(checks: Iterable[tuple[bool, str]]) -> tuple[bool, str]:
    results = list(checks)
    failing = [detail for ok, detail in results if not ok]
    if failing:
        return False, "; ".join(failing)
    return True, "; ".join(detail for _, detail in results) or "no consumers"
