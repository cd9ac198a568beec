"""Drive a running deployment from outside, as a user and an operator would: put STAC items into
the STAC API, ask for training, read the topics, query the REST API, and wait for outcomes.

The end-to-end tests (tests/e2e) and the latency benchmark (benchmarks/latency) are built on it,
with the services run by :class:`~eostream.runner.processes.ProcessGroup`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from eostream.runner.processes import ProcessGroup
from eostream.shared import topics
from eostream.shared.bus.base import parse_dead_letter
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.codec import decode
from eostream.shared.deployment import LocalStack
from eostream.shared.events import (
    DeadLetter,
    Event,
    ModelPromoted,
    ModelVersionRegistered,
    SceneClassified,
    SceneDiscovered,
    TrainingRequested,
    TrainingStarted,
)
from eostream.shared.settings import KafkaSettings
from eostream.shared.storage.s3 import S3ObjectStore

E = TypeVar("E", bound=Event)
T = TypeVar("T")


#: The real scene every staged item copies: the 29RKH tile in the data folder, its RGB and SCL
#: COGs uploaded to MinIO, and the Earth Search collection its copies are inserted into.
SCENE_DIR = "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled"
SCENE_ITEM = "S2A_29RKH_20200219_0_L2A.json"
SCENE_ASSETS = ("red", "green", "blue", "scl")
COLLECTION_TEMPLATE = "sentinel2_stac/earth_search_v1/sentinel-2-c1-l2a.collection.json"


def stage_scene(store: S3ObjectStore, data_dir: Path, prefix: str) -> dict[str, Any]:
    """Upload the real scene's COGs under ``prefix`` and return its item with s3:// hrefs."""
    folder = data_dir / SCENE_DIR
    item: dict[str, Any] = json.loads((folder / SCENE_ITEM).read_text())
    item["assets"] = {k: item["assets"][k] for k in SCENE_ASSETS}
    for asset in item["assets"].values():
        name = asset["href"].rsplit("/", 1)[-1]
        store.put_file(f"{prefix}/{name}", folder / name, "image/tiff")
        asset["href"] = store.uri(f"{prefix}/{name}")
    return item


def create_collection(stack: LocalStack, data_dir: Path, collection: str) -> None:
    """A collection in the stack's STAC API, shaped like Earth Search's Sentinel-2 L2A one."""
    body = json.loads((data_dir / COLLECTION_TEMPLATE).read_text())
    body.update(id=collection, links=[])
    response = httpx.post(f"{stack.stac_api_url}/collections", json=body, timeout=30)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"the STAC API refused collection {collection}: {response.text[:500]}")


def watch_collection(stack: LocalStack, collection: str, name: str) -> str:
    """``INGEST_SOURCES`` for an ingest that watches one collection of the stack's STAC API."""
    source = {
        "kind": "stac_api",
        "name": name,
        "url": stack.stac_api_url,
        "filter": {"collections": [collection]},
        "overlap_seconds": 30,
    }
    return json.dumps([source])


class WaitTimeout(AssertionError):
    """What was awaited did not happen in time; the message holds each service's last logs."""


@dataclass
class DeploymentDriver:
    """A running deployment (a :class:`ProcessGroup` on a :class:`LocalStack`), from outside."""

    stack: LocalStack
    group: ProcessGroup
    run: str
    collection: str
    item_template: dict[str, Any]
    store: S3ObjectStore
    inserted: list[str] = field(default_factory=list)
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    # -- names ----------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.group.deployment.model_name

    @property
    def inference_url(self) -> str:
        return self.group["inference"].ops_url

    def bus(self) -> KafkaBus:
        settings = KafkaSettings(
            bootstrap_servers=self.stack.kafka_bootstrap,
            topic_prefix=self.group.deployment.topic_prefix,
            client_id=f"e2e-{self.run}",
        )
        return KafkaBus(settings, service="e2e-test")

    # -- the STAC API ---------------------------------------------------------------------
    def new_item(self, item_id: str | None = None, **asset_hrefs: str) -> dict[str, Any]:
        item = copy.deepcopy(self.item_template)
        number = next(self._numbers)
        item["id"] = item_id or f"{self.item_template['id']}-{self.run}-{number:03d}"
        item["collection"] = self.collection
        item["links"] = []
        item["properties"]["datetime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for key, href in asset_hrefs.items():
            item["assets"][key]["href"] = href
        return item

    def insert(self, item: dict[str, Any] | None = None) -> str:
        """POST an item (a new copy of the real scene by default) to the STAC API."""
        item = item or self.new_item()
        response = httpx.post(
            f"{self.stack.stac_api_url}/collections/{self.collection}/items", json=item, timeout=60
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"the STAC API refused {item['id']}: {response.text[:500]}")
        self.inserted.append(item["id"])
        return str(item["id"])

    # -- Kafka ----------------------------------------------------------------------------
    def _on_bus(self, action: Callable[[KafkaBus], Awaitable[T]]) -> T:
        """Run ``action`` on a bus of this deployment's namespace, started and closed around it."""

        async def run() -> T:
            bus = self.bus()
            await bus.start()
            try:
                return await action(bus)
            finally:
                await bus.close()

        return asyncio.run(run())

    def events(self, topic: str, kind: type[E]) -> list[E]:
        records = self._on_bus(lambda bus: bus.read_topic(topic))
        return [e for e in map(decode, records) if isinstance(e, kind)]

    def dead_letters(self) -> list[DeadLetter]:
        records = self._on_bus(lambda bus: bus.read_topic(topics.DEAD_LETTER))
        return [parse_dead_letter(m) for m in records]

    def publish(self, topic: str, event: Event) -> None:
        self._on_bus(lambda bus: bus.publish(topic, event))

    def publish_many(self, topic: str, events: Sequence[Event]) -> None:
        self._on_bus(lambda bus: bus.publish_many(topic, events))

    def request_training(self, **fields: Any) -> TrainingRequested:
        request = TrainingRequested(
            model_name=self.model_name,
            band_set="rgb",
            architecture="small_cnn",
            batch_size=32,
            learning_rate=3e-3,
            seed=7,
            requested_by="eostream.runner.driver",
            **fields,
        )
        self.publish(topics.TRAINING_REQUESTS, request)
        return request

    def registered(self, request_id: str) -> list[ModelVersionRegistered]:
        return [
            e
            for e in self.events(topics.MODELS_REGISTERED, ModelVersionRegistered)
            if e.request_id == request_id
        ]

    def started(self, request_id: str) -> list[TrainingStarted]:
        return [
            e
            for e in self.events(topics.TRAINING_EVENTS, TrainingStarted)
            if e.request_id == request_id
        ]

    def promoted(self) -> list[ModelPromoted]:
        return [
            e
            for e in self.events(topics.MODELS_PROMOTED, ModelPromoted)
            if e.name == self.model_name
        ]

    def classified(self) -> list[SceneClassified]:
        return self.events(topics.SCENES_CLASSIFIED, SceneClassified)

    def discovered(self) -> list[SceneDiscovered]:
        return self.events(topics.SCENES_DISCOVERED, SceneDiscovered)

    # -- REST -----------------------------------------------------------------------------
    def result(self, scene_id: str) -> dict[str, Any] | None:
        response = httpx.get(f"{self.inference_url}/results/{scene_id}", timeout=30)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def results(self) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.inference_url}/results",
            params={"model_name": self.model_name, "limit": 1000},
            timeout=30,
        )
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["results"]
        return found

    def live_model(self) -> dict[str, Any] | None:
        response = httpx.get(f"{self.inference_url}/models", timeout=30)
        response.raise_for_status()
        deployed: dict[str, Any] | None = response.json()["deployed"]
        return deployed

    # -- waiting --------------------------------------------------------------------------
    def wait(self, what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
        """Poll ``check`` until it returns something truthy; on timeout, raise with the logs."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n\n".join(
                    f"--- {p.name} (starts: {p.starts}) ---\n{p.tail(25)}"
                    for p in self.group.processes.values()
                )
                raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
            time.sleep(every)

    def wait_for_champion(self, version: str, timeout: float = 240) -> None:
        self.wait(
            f"inference to serve v{version}",
            lambda: (self.live_model() or {}).get("version") == version,
            timeout,
        )

    def wait_for_results(self, scene_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        def check() -> dict[str, dict[str, Any]] | None:
            found = {r["scene_id"]: r for r in self.results()}
            return found if set(scene_ids) <= set(found) else None

        found: dict[str, dict[str, Any]] = self.wait(
            f"results of {len(scene_ids)} scenes", check, timeout, every=2.0
        )
        return found

    def train_and_promote(self, timeout: float = 600, **fields: Any) -> ModelPromoted:
        """Ask for a model, wait for its registration and promotion; return the promotion."""
        request = self.request_training(**fields)
        registered = self.wait(
            f"a version for request {request.request_id}",
            lambda: self.registered(request.request_id),
            timeout,
            every=3.0,
        )
        version = registered[0].version
        promoted: list[ModelPromoted] = self.wait(
            f"the promotion of v{version}",
            lambda: [p for p in self.promoted() if p.version == version],
            240,
            every=2.0,
        )
        return promoted[0]
