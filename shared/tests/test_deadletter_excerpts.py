"""A dead letter keeps an excerpt of an oversized value, with the original size, not the whole
value (Kafka refuses records over about 1 MB by default); such a letter is not replayed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from eostream.shared import deadletters as dl
from eostream.shared.bus import Delivery
from eostream.shared.bus.base import RetryPolicy, dead_letter_message
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import WireMessage, encode
from eostream.shared.errors import InvalidEventError
from eostream.shared.events import Event, SceneDiscovered

pytestmark = pytest.mark.timeout(60)

TEN_MB = 10 * 1024 * 1024


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


async def test_a_10_mb_record_is_dead_lettered_as_an_excerpt_and_not_replayed() -> None:
    bus = InMemoryBus(
        service="excerpts",
        dead_letter_topic=f"dlq-{uuid.uuid4().hex[:8]}",
        policy=RetryPolicy(max_retries=0, dead_letter_max_value_bytes=64 * 1024),
    )
    await bus.start()
    topic = f"scenes-{uuid.uuid4().hex[:8]}"
    event = SceneDiscovered(
        item_id="HUGE",
        item_href="https://example.test/huge.json",
        datetime=datetime(2020, 7, 14, 11, 34, tzinfo=UTC),
        processing_level="L2A",
        bands=("B02", "B03", "B04"),
        source_name="excerpts",
    )
    good = encode(event)
    # a real record made 10 MB long by padding its JSON body (still valid JSON whitespace)
    huge = WireMessage(good.key, good.value + b" " * TEN_MB, good.headers)
    await bus.publish_raw(topic, huge)
    handled: list[str] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        raise InvalidEventError("too big to bother")

    consumer = bus.consumer([topic], "excerpts", handler)
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(30):
            while bus.size(bus.dead_letter_topic) == 0:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
    finally:
        await consumer.stop()
        await task
        await bus.close()
    assert handled == []

    (record,) = bus.records(bus.dead_letter_topic)
    assert len(record.value) == 64 * 1024
    assert record.headers[dl.ORIGINAL_SIZE] == str(len(huge.value)).encode()
    letter = dl.read_letter(record)
    assert letter.letter.reason == "too big to bother"
    with pytest.raises(dl.DeadLetterQueryError, match="excerpt"):
        dl.replay_of(letter)
