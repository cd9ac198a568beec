"""A dead letter keeps an excerpt of an oversized value, with the original size, not the whole
value (Kafka refuses records over about 1 MB by default); such a letter is not replayed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from eostream.shared import deadletters as dl
from eostream.shared.bus import Delivery
from eostream.shared.bus.base import RetryPolicy, dead_letter_message
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import WireMessage, encode
from eostream.shared.errors import InvalidEventError
from eostream.shared.events import Event, SceneDiscovered
from eostream.shared.settings import KafkaSettings

pytestmark = pytest.mark.timeout(60)

TEN_MB = 10 * 1024 * 1024
EXCERPT = 64 * 1024  # the buses' dead_letter_max_value_bytes here


def test_small_values_are_kept_whole_and_large_ones_as_an_excerpt() -> None:
    delivery = Delivery(topic="t", partition=0, offset=7, key="k")
    small = WireMessage(key=b"k", value=b"x" * 1000, headers={"h": b"1"})
    kept = dead_letter_message(
        small, delivery, reason="bad", error_type="E", service="s", attempts=1
    )
    assert kept.value == small.value and dl.ORIGINAL_SIZE not in kept.headers

    large = WireMessage(key=b"k", value=b"{" + b"y" * TEN_MB, headers={"h": b"1"})
    cut = dead_letter_message(
        large, delivery, reason="bad", error_type="E", service="s", attempts=1
    )
    assert len(cut.value) == dl.MAX_VALUE_BYTES == 256 * 1024
    assert cut.value == large.value[: dl.MAX_VALUE_BYTES]
    assert cut.headers[dl.ORIGINAL_SIZE] == str(TEN_MB + 1).encode()
    assert cut.headers[dl.TRUNCATED] == b"true"
    assert cut.headers["h"] == b"1"  # the original headers stay

    smaller = dead_letter_message(
        large, delivery, reason="bad", error_type="E", service="s", attempts=1, max_value_bytes=4096
    )
    assert len(smaller.value) == 4096


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.stack)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[InMemoryBus | KafkaBus]:
    """The in-process bus, and real Kafka (its own topic prefix and dead-letter topic; one
    partition, so the record after the oversized one is handled after it)."""
    made: InMemoryBus | KafkaBus
    run = uuid.uuid4().hex[:8]
    if request.param == "memory":
        made = InMemoryBus(
            service="excerpts",
            dead_letter_topic=f"dlq-{run}",
            policy=RetryPolicy(max_retries=0, dead_letter_max_value_bytes=EXCERPT),
        )
    else:
        made = KafkaBus(
            KafkaSettings(
                bootstrap_servers=request.getfixturevalue("kafka_bootstrap"),
                dead_letter_topic=f"excerpts-dlq-{run}",
                dead_letter_max_value_bytes=EXCERPT,
                max_retries=0,
                partitions=1,
                topic_prefix=f"excerpts{run}.",
            ),
            service="excerpts",
        )
    await made.start()
    yield made
    await made.close()


async def _records(bus: InMemoryBus | KafkaBus, topic: str) -> list[WireMessage]:
    if isinstance(bus, InMemoryBus):
        return bus.records(topic)
    return await bus.read_topic(topic)


def _scene(item_id: str) -> SceneDiscovered:
    return SceneDiscovered(
        item_id=item_id,
        item_href=f"https://example.test/{item_id}.json",
        datetime=datetime(2020, 7, 14, 11, 34, tzinfo=UTC),
        processing_level="L2A",
        bands=("B02", "B03", "B04"),
        source_name="excerpts",
    )


async def test_an_oversized_record_is_dead_lettered_as_an_excerpt_and_not_replayed(
    bus: InMemoryBus | KafkaBus,
) -> None:
    """10 MB in process; on Kafka a record just under the broker's ~1 MB limit, taken by the
    real producer, consumer and dead-letter path, whose letter keeps only the excerpt."""
    padding = TEN_MB if isinstance(bus, InMemoryBus) else 900 * 1024
    topic = f"scenes-{uuid.uuid4().hex[:8]}"
    if isinstance(bus, KafkaBus):
        await bus.ensure_topics([topic])
    good = encode(_scene("HUGE"))
    # a real record made long by padding its JSON body (still valid JSON whitespace)
    huge = WireMessage(good.key, good.value + b" " * padding, good.headers)
    await bus.publish_raw(topic, huge)
    await bus.publish(topic, _scene("AFTER"))  # handled once the oversized one is done with
    handled: list[str] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        assert isinstance(event, SceneDiscovered)
        handled.append(event.item_id)
        if event.item_id == "HUGE":
            raise InvalidEventError("too big to bother")

    consumer = bus.consumer([topic], f"excerpts-{uuid.uuid4().hex[:8]}", handler)
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(60):
            while "AFTER" not in handled:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
    finally:
        await consumer.stop()
        await task
    # seen once and dead-lettered, never retried nor redelivered before the next record
    assert handled == ["HUGE", "AFTER"]

    (record,) = await _records(bus, bus.dead_letter_topic)
    assert len(record.value) == EXCERPT
    assert record.value == huge.value[:EXCERPT]
    assert record.headers[dl.ORIGINAL_SIZE] == str(len(huge.value)).encode()
    letter = dl.read_letter(record)
    assert letter.letter.reason == "too big to bother"
    with pytest.raises(dl.DeadLetterQueryError, match="excerpt"):
        dl.replay_of(letter)
    # nothing went back onto the topic: its records are the two published, the handler saw each
    # once
    assert len(await _records(bus, topic)) == 2
