"""The running service: the SceneDiscovered and ModelPromoted consumers, readiness and
liveness, over parts built elsewhere (:func:`eostream.inference.wiring.build_service`): the
scene :class:`Pipeline`, the :class:`ModelDeployment` and, when it consumes, the bus."""

from __future__ import annotations

import asyncio
import logging
import socket

from eostream.inference import remap
from eostream.inference.deployment import ModelDeployment
from eostream.inference.pipeline import Pipeline
from eostream.inference.results import ResultsStore
from eostream.inference.settings import InferenceSettings
from eostream.inference.subscriptions.delivery import Notifier
from eostream.shared import topics
from eostream.shared.bus import Bus, Consumer, ConsumerProgress, Consumers, Delivery
from eostream.shared.errors import InvalidEventError
from eostream.shared.events import Event, ModelPromoted, SceneDiscovered
from eostream.shared.storage import ObjectStore

log = logging.getLogger(__name__)
SERVICE = "inference"
#: How long a stop waits for the records in flight before it cancels their handlers.
CONSUMERS_STOP_SECONDS = 30.0


class InferenceService:
    """Runs the consumers over its parts. Without a bus it consumes nothing (the CLI's one-off
    classification, map evaluation). It closes the results index on stop, and the bus only when
    ``owns_bus`` (a bus handed in is closed by whoever built it)."""

    def __init__(
        self,
        settings: InferenceSettings,
        *,
        pipeline: Pipeline,
        deployment: ModelDeployment,
        bus: Bus | None = None,
        owns_bus: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.deployment = deployment
        self.bus = bus
        self._owns_bus = owns_bus
        self.notifier = notifier  # subscriptions: None = this service notifies nobody
        self.consumers = Consumers(SERVICE, settings.consumers)
        self._stopping = asyncio.Event()
        self._started = False

    @property
    def consume(self) -> bool:
        return self.bus is not None

    @property
    def started(self) -> bool:
        return self._started

    @property
    def store(self) -> ObjectStore:
        return self.pipeline.store

    @property
    def results(self) -> ResultsStore:
        return self.pipeline.results

    async def start(self) -> None:
        if self._started:
            return
        s = self.settings
        self._stopping.clear()
        await asyncio.to_thread(self.store.check)
        await asyncio.to_thread(self.deployment.load_initial)
        if self.bus is not None:
            bus = self.bus
            await bus.start()
            await bus.ensure_topics(
                [topics.SCENES_DISCOVERED, topics.SCENES_CLASSIFIED, topics.MODELS_PROMOTED]
            )
            models_group = s.models_group or f"inference-models-{socket.gethostname()}"
            self.consumers = Consumers(SERVICE, s.consumers)
            self.consumers.add(
                models_group,
                lambda: bus.consumer([topics.MODELS_PROMOTED], models_group, self.on_model),
            )
            self.consumers.add(
                s.scenes_group,
                lambda: _AfterModel(
                    bus.consumer([topics.SCENES_DISCOVERED], s.scenes_group, self.on_scene),
                    self,
                ),
            )
            self.consumers.start()
        if self.notifier is not None:
            await self.notifier.start()
        self._started = True

    async def stop_intake(self) -> None:
        """Take no new records (SIGTERM's first step, before the HTTP server drains): the
        consumers finish the record in flight, commit and stop, and readiness fails; REST
        requests in flight, the notifier and the results index go on until :meth:`stop`."""
        self._stopping.set()
        consumers, self.consumers = self.consumers, Consumers(SERVICE, self.settings.consumers)
        await consumers.stop(timeout=CONSUMERS_STOP_SECONDS)

    async def stop(self) -> None:
        await self.stop_intake()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.bus is not None and self._owns_bus:
            await self.bus.close()  # a bus handed in is closed by whoever built it
        self.results.close()
        self._started = False

    def readiness(self) -> tuple[bool, str]:
        model = self.deployment.current
        if not self._started:
            return False, "starting"
        if self._stopping.is_set():
            return False, "stopping"
        if model is None:
            return False, "no model deployed yet"
        if not self.results.ping():
            return False, "results database unreachable"
        if self.consume:
            ok, detail = self.consumers.readiness()
            if not ok:
                return False, detail
        return True, f"model {model.info.name} v{model.info.version} on {model.provider}"

    def liveness(self) -> tuple[bool, str]:
        return self.consumers.liveness()

    # -- handlers -----------------------------------------------------------------------
    async def on_model(self, event: Event, delivery: Delivery) -> None:
        if not isinstance(event, ModelPromoted):
            raise InvalidEventError(f"expected model.promoted, got {event.event_type}")
        await asyncio.to_thread(self.deployment.promote, event)
        if self._remaps(event):
            await self._remap(event)

    def _remaps(self, event: ModelPromoted) -> bool:
        """Whether the promoted version, now live, maps its model's earlier scenes again:
        ``INFERENCE_REMAP_ON_PROMOTION`` all, or labels (a model trained on the user's labels:
        its card names a chip dataset), or none."""
        mode, model = self.settings.remap_on_promotion, self.deployment.current
        if mode == "none" or model is None or not self.deployment.is_live(event):
            return False
        return mode == "all" or model.card.dataset is not None

    async def _remap(self, event: ModelPromoted) -> None:
        """Announce again the scenes other versions of the live model mapped (:mod:`.remap`);
        idempotent, so a redelivered promotion repeats nothing."""
        if self.bus is None:
            return
        events = await asyncio.to_thread(
            remap.remap_events, self.pipeline, event.name, event.version
        )
        if events:
            await self.bus.publish_many(topics.SCENES_DISCOVERED, events)
            log.info(
                "%s v%s is live: %d scene(s) its other versions mapped are mapped again",
                event.name, event.version, len(events),
            )  # fmt: skip

    async def on_scene(self, event: Event, delivery: Delivery) -> None:
        if not isinstance(event, SceneDiscovered):
            raise InvalidEventError(f"expected scene.discovered, got {event.event_type}")
        await self._wait_for_model()
        outcome = await asyncio.to_thread(
            self.pipeline.classify_href,
            event.item_href,
            level=event.processing_level,
            baseline=event.processing_baseline,
            replace=event.replace,
        )
        if self.bus is None:
            raise RuntimeError("a service without a bus consumes no scenes")
        # A scene found done is announced again (same event id): had the last attempt crashed
        # between writing the result and publishing, nobody would hear of the result otherwise.
        await self.bus.publish(
            topics.SCENES_CLASSIFIED, outcome.event(self.store, recomputed=event.replace)
        )

    async def _wait_for_model(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.model_wait_seconds
        while self.deployment.current is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)


class _AfterModel:
    """The scenes consumer, held back until a model is live (``defer_scenes_until_model``):
    nothing is read, nor committed, before; scenes wait on the bus."""

    def __init__(self, consumer: Consumer, service: InferenceService) -> None:
        self._consumer = consumer
        self._service = service

    @property
    def ready(self) -> bool:
        return self._consumer.ready or self._waiting

    @property
    def _waiting(self) -> bool:
        return self._service.settings.defer_scenes_until_model and (
            self._service.deployment.current is None
        )

    @property
    def progress(self) -> ConsumerProgress:
        return self._consumer.progress

    async def run(self) -> None:
        if self._waiting:
            log.info("no model live yet: scenes wait on the bus until one is promoted")
            while self._waiting:
                if self._service._stopping.is_set():
                    return
                await asyncio.sleep(0.2)
            log.info("a model is live: consuming scenes")
        await self._consumer.run()

    async def stop(self) -> None:
        await self._consumer.stop()
