"""The bridge on the real stack: MLflow server (PostgreSQL backend, webhooks), MinIO, Kafka.

Each test uses a fresh model name, so runs do not see each other's versions. The bridge's
webhook listens on a fixed port so the MLflow webhook keeps one URL across runs (MLflow caches
webhooks for 60 s; a new URL each run could be missed for that long).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import mlflow
import pytest
from prometheus_client import REGISTRY

from eostream.registry_bridge.audit import moves
from eostream.registry_bridge.registry import WEBHOOK_NAME, MlflowRegistry
from eostream.registry_bridge.service import BridgeService, standalone_bridge
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import mlm, tags, topics
from eostream.shared.bus import Delivery
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.events import Event, ModelPromoted
from eostream.shared.settings import KafkaSettings, S3Settings
from eostream.shared.storage.s3 import S3ObjectStore

pytestmark = pytest.mark.stack

WEBHOOK_PORT = 18471
SECRET = "eostream-bridge-stack-test"  # noqa: S105 - a test fixture
PROMOTER_KEY = "stack-test-promoter-key"
BUCKET = "eostream"


@pytest.fixture
def model_name() -> str:
    return f"eurosat-landcover-test-{uuid.uuid4().hex[:8]}"


def stack_settings(
    model_name: str,
    mlflow_uri: str,
    kafka: str,
    s3: str,
    keys: tuple[str, str],
    data_dir: Any,
    **overrides: Any,
) -> BridgeSettings:
    values: dict[str, Any] = dict(
        bus="kafka",
        kafka=KafkaSettings(bootstrap_servers=kafka, client_id="bridge-test"),
        store="s3",
        s3=S3Settings(endpoint=s3, access_key=keys[0], secret_key=keys[1]),
        bucket=BUCKET,
        mlflow_tracking_uri=mlflow_uri,
        data_dir=data_dir,
        model_names=(model_name,),
        http_port=WEBHOOK_PORT,
        webhook_secret=SECRET,
        webhook_url=f"http://127.0.0.1:{WEBHOOK_PORT}/webhooks/mlflow",
        reconcile_interval_seconds=3600,
        registration_grace_seconds=0,
        consumer_group=f"bridge-test-{uuid.uuid4().hex[:8]}",
        holdout={"per_class": 15},
        gate={"min_accuracy": 0.2, "max_class_drop": 0.5},
        api_keys={"stack-test": {"key": PROMOTER_KEY, "role": "promoter"}},
    )
    return BridgeSettings(**(values | overrides))


class Promotions:
    """ModelPromoted events for one model, read from Kafka by a fresh consumer group."""

    def __init__(self, bus: KafkaBus, name: str) -> None:
        self.name = name
        self.events: list[ModelPromoted] = []
        self.consumer = bus.consumer(
            [topics.MODELS_PROMOTED], f"test-{uuid.uuid4().hex}", self._handle
        )

    async def _handle(self, event: Event, delivery: Delivery) -> None:
        if isinstance(event, ModelPromoted) and event.name == self.name:
            self.events.append(event)

    async def wait(self, count: int, timeout: float = 150) -> list[ModelPromoted]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.events) >= count:
                return self.events
            await asyncio.sleep(0.5)
        raise AssertionError(f"{len(self.events)} ModelPromoted for {self.name}, wanted {count}")


@pytest.fixture
async def promotions(kafka_bootstrap: str, model_name: str) -> AsyncIterator[Promotions]:
    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, client_id="bridge-test-reader"),
        service="bridge-test",
    )
    await bus.start()
    await bus.ensure_topics([topics.MODELS_PROMOTED])
    reader = Promotions(bus, model_name)
    task = asyncio.create_task(reader.consumer.run())
    try:
        yield reader
    finally:
        await reader.consumer.stop()
        task.cancel()
        await bus.close()


def seen(source: str) -> float:
    return REGISTRY.get_sample_value("eostream_bridge_versions_seen_total", {"source": source}) or 0


def wait_for_tag(name: str, version: str, key: str, timeout: float = 150) -> dict[str, str]:
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = dict(client.get_model_version(name, version).tags)
        if key in found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{name} v{version} never got tag {key}")


@pytest.fixture
def stack(
    mlflow_uri: str,
    kafka_bootstrap: str,
    s3_endpoint: str,
    s3_credentials: tuple[str, str],
    data_dir: Any,
) -> dict[str, Any]:
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    return dict(
        mlflow_uri=mlflow_uri,
        kafka=kafka_bootstrap,
        s3=s3_endpoint,
        keys=s3_credentials,
        data_dir=data_dir,
    )


async def test_better_version_ships_by_webhook_worse_is_refused_rollback_restores(
    stack: dict[str, Any],
    model_name: str,
    promotions: Promotions,
    models: Any,
    register_to: Any,
    card: Any,
) -> None:
    settings = stack_settings(model_name, **stack)
    service = BridgeService(settings, standalone_bridge(settings), owns_bus=True)
    webhooks_before = seen("webhook")
    await service.start()
    try:
        v1 = await asyncio.to_thread(
            register_to, stack["mlflow_uri"], models.better, name=model_name, pt2=True
        )
        [event] = await promotions.wait(1)
        assert (event.version, event.alias) == (v1, "champion")
        assert seen("webhook") > webhooks_before  # heard through MLflow's webhook
        store = S3ObjectStore(settings.s3, BUCKET)  # type: ignore[arg-type]
        key = event.artifact_uri.removeprefix(f"s3://{BUCKET}/")
        assert hashlib.sha256(store.get_bytes(key)).hexdigest() == event.sha256
        item = json.loads(store.get_bytes(event.mlm_item_href.removeprefix(f"s3://{BUCKET}/")))
        assert mlm.validate_item(item, card, event.sha256) == []
        client = mlflow.MlflowClient()
        assert str(client.get_model_version_by_alias(model_name, "champion").version) == v1

        v2 = await asyncio.to_thread(
            register_to, stack["mlflow_uri"], models.worse, name=model_name
        )
        t2 = await asyncio.to_thread(wait_for_tag, model_name, v2, tags.GATE)
        assert t2[tags.GATE] == "failed"
        assert any(r.startswith("FAIL") for r in json.loads(t2[tags.GATE_REASONS]))
        assert str(client.get_model_version_by_alias(model_name, "champion").version) == v1

        v3 = await asyncio.to_thread(
            register_to, stack["mlflow_uri"], models.better, name=model_name
        )
        events = await promotions.wait(2)
        assert (events[1].version, events[1].previous_version) == (v3, v1)

        async with httpx.AsyncClient(base_url=service.server.url, timeout=120) as http:
            r = await http.post(
                f"/models/{model_name}/rollback",
                headers={"Authorization": f"Bearer {PROMOTER_KEY}"},
                json={"reason": "rollback drill"},
            )
            assert r.status_code == 200, r.text
        events = await promotions.wait(3)
        assert (events[2].version, events[2].previous_version) == (v1, v3)
        assert events[2].promoted_by == "stack-test"
        assert events[2].sha256 == event.sha256
        assert str(client.get_model_version_by_alias(model_name, "champion").version) == v1
        audit = await asyncio.to_thread(service.bridge.audit.entries, model_name)  # in MinIO
        assert (v2, "failed") in [(e.version, e.verdict) for e in audit if e.action == "gated"]
        audit = moves(audit)
        assert [(e.action, e.from_version, e.to_version, e.by, e.via) for e in audit] == [
            ("promote", None, v1, "registry-bridge", "auto"),
            ("promote", v1, v3, "registry-bridge", "auto"),
            ("rollback", v3, v1, "stack-test", "rest"),
        ]
    finally:
        await service.stop()


async def test_deployments_sharing_one_mlflow_keep_their_own_webhooks(
    stack: dict[str, Any],
) -> None:
    """Two deployments on one MLflow server (BRIDGE_WEBHOOK_NAME apart) each keep a webhook
    pointing at their own bridge: registering one does not re-point the other."""
    registry = MlflowRegistry(stack["mlflow_uri"])
    run = uuid.uuid4().hex[:8]
    urls = {f"eostream-test-{run}-{d}": f"http://127.0.0.1:1/{d}/webhooks/mlflow" for d in "ab"}
    ids = []
    try:
        for name, url in urls.items():
            ids.append(await asyncio.to_thread(registry.ensure_webhook, url, SECRET, name))
        again = await asyncio.to_thread(
            registry.ensure_webhook,
            urls[f"eostream-test-{run}-a"],
            SECRET,
            f"eostream-test-{run}-a",
        )
        assert again == ids[0]  # updated in place, not duplicated
        hooks = {h.name: h.url for h in registry.webhooks() if h.name in urls}
        assert hooks == urls
    finally:
        for hook_id in ids:
            await asyncio.to_thread(registry.client.delete_webhook, hook_id)


async def test_dropped_webhook_is_caught_up_by_the_reconcile_loop(
    stack: dict[str, Any],
    model_name: str,
    promotions: Promotions,
    models: Any,
    register_to: Any,
) -> None:
    # The MLflow webhook points at WEBHOOK_PORT; this bridge listens elsewhere and does not
    # re-register, so MLflow's delivery for this version is lost (connection refused).
    settings = stack_settings(
        model_name, **stack, http_port=0, webhook_url=None, reconcile_interval_seconds=2
    )
    registry = MlflowRegistry(stack["mlflow_uri"])
    dead_url = f"http://127.0.0.1:{WEBHOOK_PORT}/webhooks/mlflow"
    await asyncio.to_thread(registry.ensure_webhook, dead_url, SECRET)  # nobody listens there
    hooks = [h for h in registry.client.list_webhooks() if h.name == WEBHOOK_NAME]
    assert [h.url for h in hooks] == [dead_url]
    v1 = await asyncio.to_thread(register_to, stack["mlflow_uri"], models.better, name=model_name)
    before = seen("reconcile")
    service = BridgeService(settings, standalone_bridge(settings), owns_bus=True)
    await service.start()
    try:
        [event] = await promotions.wait(1)
        assert event.version == v1
        assert seen("reconcile") > before
    finally:
        await service.stop()
