"""The trainer worker: TrainingRequested / DatasetUpdated in, TrainingStarted and
ModelVersionRegistered out.

Training is blocking and long, so it runs in a worker thread while the event loop keeps the
consumer, the operations endpoint and publishing alive. One request at a time: the consumer hands
over the next record only when the previous one is done (and then commits it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from eostream.shared import topics
from eostream.shared.bus import Consumers, build_bus, heartbeat
from eostream.shared.bus.base import Bus, Consumer, Delivery
from eostream.shared.errors import RetryableError
from eostream.shared.events import (
    DatasetUpdated,
    Event,
    ModelVersionRegistered,
    TrainingRequested,
    TrainingStarted,
)
from eostream.trainer import metrics
from eostream.trainer.pipeline import Outcome, StartedCallback, train_and_register
from eostream.trainer.plan import TrainingPlan, plan_for_dataset, plan_training
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.task import BatchCallback
from eostream.trainer.tracking import is_transient

log = logging.getLogger(__name__)

SERVICE = "trainer"
CONSUMED = (topics.TRAINING_REQUESTS, topics.DATASETS_UPDATED)
Trainer = Callable[
    [TrainingPlan, TrainerSettings, StartedCallback | None, BatchCallback | None], Outcome
]


def _default_trainer(
    plan: TrainingPlan,
    settings: TrainerSettings,
    on_started: StartedCallback | None,
    on_batch: BatchCallback | None,
) -> Outcome:
    return train_and_register(plan, settings, on_started=on_started, on_batch=on_batch)


class TrainerWorker:
    def __init__(
        self,
        settings: TrainerSettings,
        bus: Bus,
        trainer: Trainer = _default_trainer,
        on_batch: BatchCallback | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self._trainer = trainer
        self._on_batch = on_batch
        self.busy = False

    def plan(self, event: Event) -> TrainingPlan | None:
        if isinstance(event, TrainingRequested):
            return plan_training(event)
        if isinstance(event, DatasetUpdated):
            return plan_for_dataset(
                event, self.settings.default_model_name, self.settings.dataset_updated_epochs
            )
        return None

    async def handle(self, event: Event, delivery: Delivery) -> None:
        plan = self.plan(event)
        if plan is None:
            log.debug("%s: ignoring %s", delivery.where(), event.event_type)
            return
        loop = asyncio.get_running_loop()

        def started(run_id: str, run_url: str, experiment_id: str) -> None:
            message = TrainingStarted(
                request_id=plan.request_id,
                run_id=run_id,
                run_url=run_url,
                experiment_id=experiment_id,
                source=SERVICE,
            )
            future = asyncio.run_coroutine_threadsafe(
                self.bus.publish(topics.TRAINING_EVENTS, message), loop
            )
            future.result(timeout=60)
            log.info("training %s started: %s", plan.request_id, run_url)

        self.busy = True
        try:
            outcome = await asyncio.to_thread(
                self._trainer, plan, self.settings, started, self._batch_done
            )
        except Exception as exc:
            metrics.TRAININGS.labels(plan.band_set, "failed").inc()
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


async def run_worker(
    settings: TrainerSettings, bus: Bus | None = None, on_batch: BatchCallback | None = None
) -> None:
    """Run until SIGTERM/SIGINT: consume, train, publish; operators' endpoint alongside."""
    from eostream.shared.ops import OpsServer, create_ops_app
    from eostream.shared.runtime import install_stop_signals, preflight

    await preflight(settings)
    bus = bus or build_bus(settings, service=SERVICE)
    await bus.start()
    try:
        await bus.ensure_topics([*CONSUMED, topics.TRAINING_EVENTS, topics.MODELS_REGISTERED])
        worker = TrainerWorker(settings, bus, on_batch=on_batch)
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
