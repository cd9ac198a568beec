"""Ask for a training and follow it: publish ``TrainingRequested`` on the deployment's bus (Kafka
on the stack, the SQLite log of the embedded mode) and wait for the trainer's ``TrainingStarted``
(it carries the MLflow run link) and, if asked, for the registered version.

Training has no REST endpoint: requests are events, so that a trainer that is down or busy loses
none. The client is given the bus (``eostream.shared.bus.build_bus(settings)``, or the embedded
system's), started, and leaves it open.

    training = TrainingClient(bus)
    submitted = await training.submit(TrainingRequested(epochs=3, samples_per_class=30))
    print(submitted.run_url)                      # the MLflow run, live while it trains
    registered = await training.registered(submitted)
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

from eostream.shared import topics
from eostream.shared.bus.base import Bus, Consumer
from eostream.shared.events import (
    Event,
    ModelVersionRegistered,
    TrainingRequested,
    TrainingStarted,
)


@dataclass
class Submission:
    """A training request on the bus; ``run_url`` once the trainer started it (MLflow)."""

    request: TrainingRequested
    started: TrainingStarted | None = None
    _registered: asyncio.Future[ModelVersionRegistered] | None = field(default=None, repr=False)
    _consumer: Consumer | None = field(default=None, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def run_url(self) -> str | None:
        return self.started.run_url if self.started else None

    @property
    def run_id(self) -> str | None:
        return self.started.run_id if self.started else None


class TrainingTimeout(TimeoutError):
    """The trainer did not answer in time (is it running on this bus?)."""


class TrainingClient:
    """Training requests over a started :class:`~eostream.shared.bus.base.Bus`."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def submit(
        self, request: TrainingRequested, *, wait_started: float | None = 300
    ) -> Submission:
        """Publish ``request``; with ``wait_started`` (seconds), return once the trainer started
        it, so the submission carries its MLflow run link (TrainingTimeout if it did not)."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[TrainingStarted] = loop.create_future()
        submission = Submission(request, _registered=loop.create_future())

        async def listen(event: Event, _delivery: object) -> None:
            if getattr(event, "request_id", None) != request.request_id:
                return
            if isinstance(event, TrainingStarted) and not started.done():
                started.set_result(event)
            registered = submission._registered
            if isinstance(event, ModelVersionRegistered) and registered and not registered.done():
                registered.set_result(event)

        group = f"eostream-client-{uuid.uuid4().hex[:12]}"
        # a follower: the trainer's consumers dead-letter a bad record once, not each client
        consumer = self._bus.consumer(
            [topics.TRAINING_EVENTS, topics.MODELS_REGISTERED], group, listen, dead_letter=False
        )
        submission._consumer = consumer
        submission._task = asyncio.create_task(consumer.run())
        await self._bus.publish(topics.TRAINING_REQUESTS, request)
        if wait_started is not None:
            try:
                submission.started = await asyncio.wait_for(asyncio.shield(started), wait_started)
            except TimeoutError:
                await self.close(submission)
                raise TrainingTimeout(
                    f"no trainer started request {request.request_id} within {wait_started:.0f} s"
                ) from None
        else:
            started.add_done_callback(
                lambda f: setattr(submission, "started", f.result()) if not f.cancelled() else None
            )
        return submission

    async def registered(
        self, submission: Submission, *, timeout: float = 900
    ) -> ModelVersionRegistered:
        """Wait until the trained model is registered (its name, version and test metrics)."""
        assert submission._registered is not None  # noqa: S101 - set by submit
        try:
            return await asyncio.wait_for(asyncio.shield(submission._registered), timeout)
        except TimeoutError:
            raise TrainingTimeout(
                f"request {submission.request_id} registered no model within {timeout:.0f} s"
            ) from None
        finally:
            await self.close(submission)

    async def close(self, submission: Submission) -> None:
        """Stop listening for the submission's events."""
        if submission._consumer is not None:
            await submission._consumer.stop()
        if submission._task is not None:
            submission._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await submission._task
