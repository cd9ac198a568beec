"""Wiring: builds the bus, object store, results index and pipeline from settings, runs the
SceneDiscovered and ModelPromoted consumers, and reloads the last live model at start."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from eostream.inference.model import ModelInfo
from eostream.inference.pipeline import Pipeline
from eostream.inference.results import ResultsStore, build_results_store
from eostream.inference.session import ModelHolder
from eostream.inference.settings import InferenceSettings
from eostream.shared import topics
from eostream.shared.bus import Bus, Consumer, ConsumerProgress, Consumers, Delivery, build_bus
from eostream.shared.errors import InvalidEventError
from eostream.shared.events import Event, ModelPromoted, SceneDiscovered
from eostream.shared.storage import ObjectStore, build_object_store

log = logging.getLogger(__name__)
SERVICE = "inference"


class InferenceService:
    def __init__(
        self,
        settings: InferenceSettings,
        *,
        bus: Bus | None = None,
        store: ObjectStore | None = None,
        results: ResultsStore | None = None,
        consume: bool = True,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self._owns_bus = bus is None
        self.store = store
        self._results = results
        self.consume = consume
        self.holder = ModelHolder()
        self._pipeline: Pipeline | None = None
        self.consumers = Consumers(SERVICE, settings.consumers)
        self._stopping = asyncio.Event()
        self._started = False

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise RuntimeError("InferenceService.start() has not run")
        return self._pipeline

    async def start(self) -> None:
        if self._started:
            return
        s = self.settings
        if self.store is None:
            self.store = build_object_store(s)
        await asyncio.to_thread(self.store.check)
        if self._results is None:
            self._results = await asyncio.to_thread(build_results_store, s.results_db)
        self._pipeline = Pipeline(s, self.store, self._results, self.holder)
        await self._load_initial_model()
        if self.consume:
            if self.bus is None:
                self.bus = build_bus(s, service=SERVICE)
            await self.bus.start()
            await self.bus.ensure_topics(
                [topics.SCENES_DISCOVERED, topics.SCENES_CLASSIFIED, topics.MODELS_PROMOTED]
            )
            models_group = s.models_group or f"inference-models-{socket.gethostname()}"
            self._stopping.clear()
            bus = self.bus
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
        self._started = True

    async def _load_initial_model(self) -> None:
        s, pipeline = self.settings, self.pipeline
        if s.initial_model_uri:
            info = ModelInfo(
                name="initial",
                version="0",
                artifact_uri=s.initial_model_uri,
                sha256=s.initial_model_sha256 or "",
            )
            await asyncio.to_thread(
                pipeline.deploy_uri, info, s.initial_model_uri, s.initial_model_sha256
            )
            return
        if self._results is None:
            raise RuntimeError("results store missing")
        for row in await asyncio.to_thread(self._results.deployments, 50, s.model_name):
            if (s.model_name and row["name"] != s.model_name) or (
                s.model_alias and row["alias"] != s.model_alias
            ):
                continue  # another deployment's model, in a results index it shares
            if row["status"] == "live" and row["artifact_uri"]:
                info = ModelInfo(
                    name=row["name"],
                    version=row["version"],
                    alias=row["alias"],
                    run_id=row["run_id"],
                    sha256=row["sha256"] or "",
                    artifact_uri=row["artifact_uri"],
                    mlm_item_href=row["mlm_item_href"],
                )
                try:
                    await asyncio.to_thread(
                        pipeline.deploy_uri, info, row["artifact_uri"], row["sha256"]
                    )
                except InvalidEventError as exc:
                    log.warning("could not reload the last live model: %s", exc)
                return

    async def stop(self) -> None:
        self._stopping.set()
        await self.consumers.stop(timeout=30)
        if self.bus is not None and self.consume and self._owns_bus:
            await self.bus.close()  # a bus handed in is closed by whoever built it
        if self._results is not None:
            self._results.close()
        self._started = False

    def readiness(self) -> tuple[bool, str]:
        model = self.holder.current
        if not self._started:
            return False, "starting"
        if model is None:
            return False, "no model deployed yet"
        if self._results is not None and not self._results.ping():
            return False, "results database unreachable"
        if self.consume:
            ok, detail = self.consumers.readiness()
            if not ok:
                return False, detail
        return True, f"model {model.info.name} v{model.info.version} on {model.provider}"

    def liveness(self) -> tuple[bool, str]:
        return self.consumers.liveness()

    @property
    def results(self) -> ResultsStore:
        if self._results is None:
            raise RuntimeError("InferenceService.start() has not run")
        return self._results

    # -- handlers -----------------------------------------------------------------------
    async def on_model(self, event: Event, delivery: Delivery) -> None:
        if not isinstance(event, ModelPromoted):
            raise InvalidEventError(f"expected model.promoted, got {event.event_type}")
        s = self.settings
        if (s.model_name and event.name != s.model_name) or (
            s.model_alias and event.alias != s.model_alias
        ):
            log.info(
                "ignoring promotion of %s v%s@%s: this service serves %s@%s",
                event.name,
                event.version,
                event.alias,
                s.model_name or "*",
                s.model_alias or "*",
            )
            return
        current = self.holder.current
        if current is not None and (
            current.info.name,
            current.info.version,
            current.info.sha256,
        ) == (event.name, event.version, event.sha256):
            log.info("model %s v%s is already live; nothing to do", event.name, event.version)
            return
        await asyncio.to_thread(self.pipeline.deploy, event)

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
        if self.bus is None or self.store is None:
            raise RuntimeError("InferenceService.start() has not run")
        # A scene found done is announced again (same event id): had the last attempt crashed
        # between writing the result and publishing, nobody would hear of the result otherwise.
        await self.bus.publish(
            topics.SCENES_CLASSIFIED, outcome.event(self.store, recomputed=event.replace)
        )

    async def _wait_for_model(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.model_wait_seconds
        while self.holder.current is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)

    def describe(self) -> dict[str, Any]:
        model = self.holder.current
        if model is None:
            return {}
        i = model.info
        return {
            "name": i.name,
            "version": i.version,
            "alias": i.alias,
            "run_id": i.run_id,
            "sha256": i.sha256,
            "artifact_uri": i.artifact_uri,
            "mlm_item_href": i.mlm_item_href,
            "provider": model.provider,
            "bands": list(model.card.bands),
            "classes": list(model.card.classes),
            "processing_level": model.card.processing_level,
            "swaps": self.holder.swaps,
        }


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
            self._service.holder.current is None
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
