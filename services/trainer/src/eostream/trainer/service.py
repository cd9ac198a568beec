"""The trainer worker: TrainingRequested / DatasetUpdated in, TrainingStarted and
ModelVersionRegistered out.

Training is blocking and long, so it runs in a worker thread while the event loop keeps the
consumer, the operations endpoint and publishing alive. One request at a time: the consumer hands
over the next record only when the previous one is done (and then commits it).

Wiring, the shape of every eostream service: :func:`from_settings` picks the adapters the settings
name (Kafka or in-process bus; the MLflow server or sqlite tracker) and returns them as
:class:`TrainerAdapters`; :func:`build_trainer` takes them as keyword arguments and builds the
worker. Constructors take their adapters and never build one. Only the entrypoints call
:func:`from_settings`: ``cli.py`` (for :func:`run_worker`) and ``embedded.py`` (which hands in the
embedded mode's shared bus).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from eostream.shared import topics
from eostream.shared.bus import Consumers, build_bus, heartbeat
from eostream.shared.bus.base import Bus, Consumer, Delivery
from eostream.shared.errors import BusUnavailableError, RetryableError
from eostream.shared.events import (
    DatasetUpdated,
    Event,
    ModelVersionRegistered,
    TrainingRequested,
    TrainingStarted,
)
from eostream.trainer import labelled, metrics
from eostream.trainer.pipeline import Outcome, StartedCallback, tracker_for, train_and_register
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.task import BatchCallback
from eostream.trainer.tracking import Tracker, is_transient

log = logging.getLogger(__name__)

SERVICE = "trainer"
CONSUMED = (topics.TRAINING_REQUESTS, topics.DATASETS_UPDATED)
#: how much longer than the bus's own publish retries the training thread waits for its
#: TrainingStarted to be taken (the in-memory bus does not retry)
STARTED_MARGIN_SECONDS = 60.0
#: One training, run in the worker thread: plan, settings, tracker, on_started, on_batch.
Trainer = Callable[
    [TrainingPlan, TrainerSettings, Tracker, StartedCallback | None, BatchCallback | None],
    Outcome,
]


def train(
    plan: TrainingPlan,
    settings: TrainerSettings,
    tracker: Tracker,
    on_started: StartedCallback | None,
    on_batch: BatchCallback | None,
) -> Outcome:
    """The worker's training: :func:`~eostream.trainer.pipeline.train_and_register`."""
    return train_and_register(
        plan, settings, tracker=tracker, on_started=on_started, on_batch=on_batch
    )


@dataclass(frozen=True)
class TrainerAdapters:
    """What the trainer talks to; the entrypoint picks each one (:func:`from_settings`).

    Whoever built the bus starts and closes it (:func:`run_worker` does for its own).
    """

    bus: Bus
    tracker: Tracker


def from_settings(settings: TrainerSettings, *, bus: Bus | None = None) -> TrainerAdapters:
    """The adapters the settings name. ``bus``: one the caller already has (the embedded mode's
    shared bus, a test's); else the settings' (Kafka or in-process)."""
    return TrainerAdapters(
        bus=bus if bus is not None else build_bus(settings, service=SERVICE),
        tracker=tracker_for(settings),
    )


def build_trainer(
    settings: TrainerSettings,
    *,
    bus: Bus,
    tracker: Tracker,
    trainer: Trainer = train,
    on_batch: BatchCallback | None = None,
) -> TrainerWorker:
    """The worker on these adapters. ``trainer``: what runs one training in the worker thread
    (the embedded mode wraps :func:`train` to interrupt it); ``on_batch``: called after each
    batch, in that thread."""
    return TrainerWorker(settings, bus=bus, tracker=tracker, trainer=trainer, on_batch=on_batch)


class TrainerWorker:
    def __init__(
        self,
        settings: TrainerSettings,
        *,
        bus: Bus,
        tracker: Tracker,
        trainer: Trainer = train,
        on_batch: BatchCallback | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.tracker = tracker
        self._trainer = trainer
        self._on_batch = on_batch
        self.busy = False

    def plan(self, event: Event) -> TrainingPlan | None:
        if isinstance(event, TrainingRequested):  # a dataset may need chips cut: blocking
            return labelled.request_plan(event, self.settings)
        if isinstance(event, DatasetUpdated):  # may cut chips from labels: blocking
            return labelled.dataset_plan(event, self.settings)
        return None

    async def handle(self, event: Event, delivery: Delivery) -> None:
        plan = await asyncio.to_thread(self.plan, event)
        if plan is None:
            log.debug("%s: ignoring %s", delivery.where(), event.event_type)
            return
        loop = asyncio.get_running_loop()

        def started(run_id: str, run_url: str, experiment_id: str, reused: bool) -> None:
            message = TrainingStarted(
                request_id=plan.request_id,
                run_id=run_id,
                run_url=run_url,
                experiment_id=experiment_id,
                reused=reused,
                source=SERVICE,
            )
            future = asyncio.run_coroutine_threadsafe(
                self.bus.publish(topics.TRAINING_EVENTS, message), loop
            )
            # the publish retries an unreachable broker for publish_retry_seconds and then
            # raises BusUnavailableError (the record is redelivered, never dead-lettered): wait
            # past that, so a broker outage is not taken for an MLflow one
            future.result(timeout=self._started_timeout())
            if reused:
                log.info("training %s was done already: %s", plan.request_id, run_url)
            else:
                log.info("training %s started: %s", plan.request_id, run_url)

        self.busy = True
        try:
            outcome = await asyncio.to_thread(
                self._trainer, plan, self.settings, self.tracker, started, self._batch_done
            )
        except Exception as exc:
            metrics.TRAININGS.labels(plan.band_set, "failed").inc()
            if isinstance(exc, BusUnavailableError):
                raise  # the broker, not MLflow: the consumer stops and the record comes again
            if is_transient(exc):
                raise RetryableError(f"MLflow unreachable: {exc}") from exc
            raise
        finally:
            self.busy = False
        metrics.TRAININGS.labels(plan.band_set, "reused" if outcome.reused else "registered").inc()
        if not outcome.reused:
            metrics.TRAINING_DURATION.labels(plan.band_set).observe(
                outcome.metrics.get("run_time_seconds", 0.0)
            )
            metrics.TRAIN_THROUGHPUT.labels(plan.band_set).set(
                outcome.metrics.get("train_images_per_second", 0.0)
            )
            metrics.TEST_ACCURACY.labels(plan.band_set).set(
                outcome.metrics.get("test_accuracy", 0.0)
            )
        await self.bus.publish(
            topics.MODELS_REGISTERED,
            ModelVersionRegistered(
                name=outcome.version.name,
                version=outcome.version.version,
                run_id=outcome.version.run_id,
                request_id=plan.request_id,
                band_set=plan.band_set,
                metrics=outcome.metrics,
                source=SERVICE,
            ),
        )

    def _started_timeout(self) -> float:
        kafka = self.settings.kafka
        if kafka is None:
            return STARTED_MARGIN_SECONDS
        # the bus retries for publish_retry_seconds, and its last attempt may then wait for the
        # broker's answer up to request_timeout_ms (15 s by default, settable past the margin)
        return (
            kafka.publish_retry_seconds + kafka.request_timeout_ms / 1000 + STARTED_MARGIN_SECONDS
        )

    def _batch_done(self, batch_size: int) -> None:
        """In the training thread, after each batch: the consumer is not stalled, it trains."""
        heartbeat()
        if self._on_batch is not None:
            self._on_batch(batch_size)

    def consumer(self) -> Consumer:
        return self.bus.consumer(list(CONSUMED), self.settings.consumer_group, self.handle)

    def supervised(self) -> Consumers:
        """The worker's consumer under supervision: started again whenever it ends unasked."""
        consumers = Consumers(SERVICE, self.settings.consumers)
        consumers.add(self.settings.consumer_group, self.consumer)
        return consumers


async def run_worker(settings: TrainerSettings, adapters: TrainerAdapters) -> None:
    """Run until SIGTERM/SIGINT: consume, train, publish; operators' endpoint alongside.

    ``adapters`` (from :func:`from_settings`) are this process's: the bus is started and closed
    here.
    """
    from eostream.shared.ops import OpsServer, create_ops_app
    from eostream.shared.runtime import install_stop_signals, preflight

    await preflight(settings)
    bus = adapters.bus
    await bus.start()
    try:
        await bus.ensure_topics([*CONSUMED, topics.TRAINING_EVENTS, topics.MODELS_REGISTERED])
        worker = build_trainer(settings, bus=bus, tracker=adapters.tracker)
        consumers = worker.supervised()
        [consumer] = consumers.members

        def readiness() -> tuple[bool, str]:
            ok, detail = consumers.readiness()
            if not ok:
                return False, detail
            return True, "training" if worker.busy else "idle"

        app = create_ops_app(SERVICE, readiness, consumers.liveness)
        ops = OpsServer(app, settings.http_host, settings.http_port)
        await ops.start()
        stopping: set[asyncio.Task[None]] = set()

        def stop() -> None:
            task = asyncio.ensure_future(consumer.stop())
            stopping.add(task)  # keep a reference until it is done
            task.add_done_callback(stopping.discard)

        install_stop_signals(stop)
        try:
            await consumer.run()
        finally:
            await ops.stop()
    finally:
        await bus.close()
