# ruff: noqa: F811 (the fixtures imported from test_subscriptions are used by name)
"""Subscriptions on the real stack: subscriptions and deliveries in PostgreSQL (the results
index), the Kafka target and the dead letters on the real broker. Needs `deploy/local/stack up`;
fails (does not skip) without it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from eostream.inference.api.app import create_app
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.events import ModelPromoted
from eostream.shared.settings import KafkaSettings

from .conftest import AUTH
from .test_stack import _env
from .test_subscriptions import (  # noqa: F401
    Receiver,
    receiver,
    sub_settings,
    verify,
)

pytestmark = pytest.mark.stack

#: around the 29RKH tile (its bbox: -11.98, 24.30, -10.87, 25.30)
RKH_AREA = {
    "type": "Polygon",
    "coordinates": [[[-11.5, 24.5], [-11.0, 24.5], [-11.0, 25.0], [-11.5, 25.0], [-11.5, 24.5]]],
}


async def test_kafka_target_and_dead_letters_on_the_stack_with_postgresql(
    sub_settings: InferenceSettings,
    receiver: Receiver,
    rkh_item: Path,
    make_model: Callable[..., ModelPromoted],
    own_results_db: str,
) -> None:
    run = uuid.uuid4().hex[:10]
    settings = sub_settings.model_copy(
        update={
            "bus": "kafka",
            # a prefix of our own: our topics (and dead letters) apart from everyone else's
            "kafka": KafkaSettings(
                bootstrap_servers=_env("EOSTREAM_KAFKA_BOOTSTRAP"), topic_prefix=f"subs{run}."
            ),
            "results_db": own_results_db,
            "results_prefix": f"results-{run}",
            "subscriptions": sub_settings.subscriptions.model_copy(update={"max_retries": 1}),
        }
    )
    service = await asyncio.to_thread(build_service, settings)
    assert type(service.results).__name__ == "PostgresResultsStore"
    assert service.bus is not None and service.notifier is not None
    await service.bus.start()
    await service.notifier.start()  # the notifier alone: no consumers of the shared topics
    topic = f"eostream.notifications.stack-{run}"
    transport = httpx.ASGITransport(app=create_app(settings, service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            to_kafka: dict[str, Any] = (
                await api.post(
                    "/subscriptions",
                    json={"geometry": RKH_AREA, "kafka_topic": topic},
                    headers=AUTH,
                )
            ).json()
            receiver.status = 500
            to_hook: dict[str, Any] = (
                await api.post(
                    "/subscriptions",
                    json={"geometry": RKH_AREA, "webhook_url": receiver.url},
                    headers=AUTH,
                )
            ).json()
            model = make_model(run, name=f"eurosat-subs-{run}")
            await asyncio.to_thread(service.deployment.deploy, model)
            outcome = await asyncio.to_thread(service.pipeline.classify_href, str(rkh_item))
            assert not outcome.skipped

            bus = service.bus
            assert isinstance(bus, KafkaBus)
            records = []
            for _ in range(60):
                records = await bus.read_topic(topic, timeout=5)
                if records:
                    break
                await asyncio.sleep(0.5)
            assert len(records) == 1
            event = ce_kafka.from_binary(
                ce_kafka.KafkaMessage(
                    headers=records[0].headers, key=records[0].key, value=records[0].value
                ),
                JSONFormat(),
                CloudEvent,
            )
            data = event.get_data()
            assert isinstance(data, dict) and data["result_id"] == outcome.record.id

            for _ in range(200):
                rows = (
                    await api.get(f"/subscriptions/{to_hook['id']}/deliveries", headers=AUTH)
                ).json()["deliveries"]
                if rows and rows[0]["status"] == "dead":
                    break
                await asyncio.sleep(0.1)
            assert [(r["status"], r["attempts"]) for r in rows] == [("dead", 2)]
            letters = [
                d
                for d in await bus.read_dead_letters(limit=100, timeout=10)
                if d.original_topic == f"webhook:{to_hook['id']}"
            ]
            assert len(letters) == 1 and "HTTP 500" in letters[0].reason
            assert len(receiver.posts) == 2
            verify(to_hook["secret"], receiver.posts[-1])
            for sid in (to_kafka["id"], to_hook["id"]):
                assert (await api.delete(f"/subscriptions/{sid}", headers=AUTH)).status_code == 204
    finally:
        await service.stop()  # the notifier, the bus it built, the results index
