"""10,000 events through real Kafka, the consumer SIGKILLed mid-stream and restarted; and a
producer that died of a producer-state error replaced without losing a batch.

Every event's effect must be applied exactly once: nothing lost, redelivered duplicates absorbed
by the idempotency key, and the one poison message in the stream dead-lettered with its reason.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.codec import WireMessage
from eostream.shared.events import SceneDiscovered
from eostream.shared.settings import KafkaSettings

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(300)]

TOTAL = 10_000
CONSUMER = Path(__file__).with_name("exactly_once_consumer.py")


def count(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
    except sqlite3.OperationalError:
        return 0  # the consumer has not created its tables yet


def scenes(count: int, source: str) -> list[SceneDiscovered]:
    now = datetime.now(UTC)
    return [
        SceneDiscovered(
            item_id=f"S2X_{i:05d}",
            item_href=f"s3://scenes/{i}.json",
            datetime=now,
            processing_level="L2A",
            bands=("B04",),
            source_name=source,
        )
        for i in range(count)
    ]


def start_consumer(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(CONSUMER), *args])


def wait_for(predicate: object, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_sigkill_mid_stream_loses_nothing_and_applies_everything_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topic, group, dlq = f"exactly-once-{run}", f"exactly-once-{run}", f"exactly-once-dlq-{run}"
    db = tmp_path / "effects.sqlite"

    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, dead_letter_topic=dlq), service="producer"
    )
    await bus.start()
    events = scenes(TOTAL, "exactly-once")
    await bus.publish_many(topic, events[: TOTAL // 2])
    await bus.publish_raw(topic, WireMessage(key=b"S2X_poison", value=b"{not json", headers={}))
    await bus.publish_many(topic, events[TOTAL // 2 :])

    args = (kafka_bootstrap, topic, group, str(db), dlq)
    first = start_consumer(*args)
    try:
        wait_for(lambda: count(db, "effects") >= 2_000, "the first consumer to get going")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed_at = count(db, "effects")
        assert killed_at < TOTAL, "the consumer finished before it could be killed"
    finally:
        if first.poll() is None:
            first.kill()

    second = start_consumer(*args)
    try:
        wait_for(lambda: count(db, "effects") >= TOTAL, "every event's effect")
        # Let the consumer see anything left over, then stop it gracefully (SIGTERM drain).
        await asyncio.sleep(1.0)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    finally:
        if second.poll() is None:
            second.kill()

    with sqlite3.connect(db) as conn:
        applied = conn.execute("SELECT count(*), count(DISTINCT item) FROM effects").fetchone()
    deliveries = count(db, "deliveries")
    assert applied == (TOTAL, TOTAL)
    assert deliveries >= TOTAL
    print(f"killed after {killed_at} effects; {deliveries - TOTAL} duplicate deliveries absorbed")  # noqa: T201

    letters = await bus.read_dead_letters(limit=10)
    await bus.close()
    assert len(letters) == 1
    assert letters[0].original_key == "S2X_poison"
    assert letters[0].original_value == b"{not json"
    assert letters[0].original_topic == topic
    assert "not a CloudEvents" in letters[0].reason


async def test_a_producer_that_lost_its_idempotence_state_is_replaced_and_the_batch_sent(
    kafka_bootstrap: str,
) -> None:
    """After a broker restart the idempotent producer can die for good: aiokafka stops its sender
    and every later send raises OutOfOrderSequenceNumber. The bus must start a new producer and
    send the batch again, not back off forever with the dead one."""
    run = uuid.uuid4().hex[:8]
    topic = f"producer-state-{run}"
    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, dead_letter_topic=f"dlq-{run}"),
        service="producer-state",
    )
    await bus.start()
    try:
        events = scenes(20, "producer-state")
        await bus.publish_many(topic, events[:10])
        dead = bus._producer
        assert dead is not None
        # What aiokafka does when its sender dies of a producer-state error: every pending and
        # later record fails with it.
        dead._message_accumulator.fail_all(OutOfOrderSequenceNumber("broker lost the sequence"))
        with pytest.raises(OutOfOrderSequenceNumber):
            await dead.send_and_wait(bus.physical(topic), b"x")

        await bus.publish_many(topic, events[10:])
        await bus.publish(topic, events[0])

        assert bus._producer is not None and bus._producer is not dead
        seen = [m.key or b"" for m in await bus.read_topic(topic)]
        assert sorted(set(seen)) == sorted(e.item_id.encode() for e in events)
    finally:
        await bus.close()
