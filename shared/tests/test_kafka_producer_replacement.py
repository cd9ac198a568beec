"""Concurrent sends on a producer that died of a producer-state error replace it once.

A real broker cannot be made to lose a producer's sequence state on demand, so the producer is
killed the way aiokafka's own sender kills it: every pending and later record fails with
OutOfOrderSequenceNumber (``fail_all``). Everything else is the real bus on the stack's Kafka.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber

from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.events import SceneDiscovered
from eostream.shared.settings import KafkaSettings

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]


def _scene(n: int) -> SceneDiscovered:
    return SceneDiscovered(
        item_id=f"S2X_{n:05d}",
        item_href=f"s3://scenes/{n}.json",
        datetime=datetime.now(UTC),
        processing_level="L2A",
        bands=("B04",),
        source_name="producer-race",
    )


async def test_concurrent_sends_on_a_dead_producer_replace_it_once(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four publishes in flight when the producer dies (a notifier's concurrency): one new
    producer, the dead one stopped, none leaked, every record delivered."""
    run = uuid.uuid4().hex[:8]
    topic = f"producer-race-{run}"
    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, dead_letter_topic=f"dlq-{run}"),
        service="producer-race",
    )
    await bus.start()
    try:
        await bus.publish(topic, _scene(0))  # the topic exists, the producer has its metadata
        dead = bus._producer
        assert dead is not None

        made: list[AIOKafkaProducer] = []
        new_producer = bus._new_producer

        def counted() -> AIOKafkaProducer:
            made.append(new_producer())
            return made[-1]

        failures = 0
        replace = bus._replace_producer

        async def seen(producer: AIOKafkaProducer, exc: KafkaError) -> None:
            nonlocal failures
            failures += 1
            await replace(producer, exc)

        monkeypatch.setattr(bus, "_new_producer", counted)
        monkeypatch.setattr(bus, "_replace_producer", seen)

        sends = [asyncio.create_task(bus.publish(topic, _scene(n))) for n in range(1, 5)]
        await asyncio.sleep(0)  # each record waits in the producer's batch (linger)
        # what aiokafka does when its sender dies of a producer-state error
        dead._message_accumulator.fail_all(OutOfOrderSequenceNumber("broker lost the sequence"))
        await asyncio.gather(*sends)

        assert failures == 4  # all four failed on the dead producer
        assert len(made) == 1  # and replaced it once
        assert not made[0]._closed
        assert bus._producer is made[0]
        assert dead._closed
        keys = {m.key for m in await bus.read_topic(topic)}
        assert keys == {_scene(n).item_id.encode() for n in range(5)}
    finally:
        await bus.close()
    assert all(p._closed for p in made)
