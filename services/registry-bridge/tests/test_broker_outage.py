"""The broker stops exactly while the bridge publishes ModelPromoted (the publish is held at a gate
until the broker is down): the publish is retried until the broker is back, the consumer of
ModelVersionRegistered keeps running, and the version is promoted and announced once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import topics
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.codec import decode
from eostream.shared.events import ModelPromoted, ModelVersionRegistered
from eostream.shared.settings import KafkaSettings

from .conftest import make_service

pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.slow, pytest.mark.timeout(600)]


async def test_a_broker_outage_during_the_publish_ends_with_the_version_promoted_once(
    kafka_bootstrap: str,
    bridge_settings: BridgeSettings,
    register: Any,
    models: Any,
    outage: Any,
) -> None:
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"outage{run}.")
    settings = bridge_settings.model_copy(
        update={
            "bus": "kafka",
            "kafka": kafka,
            "consumer_group": f"bridge-{run}",
            "reconcile_interval_seconds": 3600,  # the consumer is the way in, not reconcile
        }
    )
    bus = KafkaBus(kafka, service="registry-bridge")
    await bus.start()
    gated = outage.gate(bus, topics.MODELS_PROMOTED)
    service = make_service(settings, gated, webhooks=False)
    await service.start()
    [member] = service.consumers.members
    try:
        version = register(models.better)
        await bus.publish(
            topics.MODELS_REGISTERED,
            ModelVersionRegistered(
                name="eurosat-landcover", version=version, run_id="r", band_set="rgb"
            ),
        )
        await outage.during(gated, "registry-bridge")
        await outage.wait_for(
            lambda: member.ready and member.progress is not None and member.progress.records > 0,
            "the consumer to run after the outage",
        )
        announced: list[Any] = []

        async def read() -> None:
            announced[:] = [decode(m) for m in await bus.read_topic(topics.MODELS_PROMOTED)]

        for _ in range(600):  # the held publish completes once the broker is back
            await read()
            if announced:
                break
            await asyncio.sleep(0.5)
        assert announced and {e.id for e in announced} == {announced[0].id}
        event = announced[0]
        assert isinstance(event, ModelPromoted) and event.version == version
        assert member.restarts == 0 and service.readiness()[0]
        assert service.consumers.liveness()[0]
    finally:
        gated.release.set()
        await service.stop()
        await bus.close()
