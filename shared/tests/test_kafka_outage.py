"""The broker out of reach, for real: the stack's Kafka stopped under a running consumer.

aiokafka keeps a consumer's partitions and their last known ends while the broker is gone, so its
lag read 0 and it looked idle and healthy: `eostream_consumer_connected` says it has no group
coordinator (EostreamConsumerDisconnected), and an idle poll without one is not progress.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.bus.supervisor import SupervisedConsumer
from eostream.shared.events import Event
from eostream.shared.settings import KafkaSettings

# alone: the broker every other stack test uses is stopped for half a minute
pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.timeout(240)]

STACK = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack"
CONNECTED = "eostream_consumer_connected"
LAG = "eostream_consumer_lag_messages"


async def until(check: Callable[[], bool], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def stack(*args: str) -> None:
    await asyncio.to_thread(subprocess.run, [str(STACK), *args], check=True, capture_output=True)


async def test_a_consumer_without_its_broker_says_so_and_makes_no_progress(
    kafka_bootstrap: str,
) -> None:
    run = uuid.uuid4().hex[:8]
    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, dead_letter_topic=f"dlq-{run}"),
        service="outage",
    )
    await bus.start()

    async def handler(event: Event, delivery: object) -> None:
        return None

    group = f"outage-{run}"
    member = SupervisedConsumer(
        lambda: bus.consumer([f"outage-{run}"], group, handler), service="outage", group=group
    )
    labels = {"service": "outage", "group": group}
    task = asyncio.create_task(member.run())
    stopped = False
    try:
        await until(lambda: REGISTRY.get_sample_value(CONNECTED, labels) == 1, "connected", 60)
        await until(lambda: member.ready, "the consumer in its group", 60)
        lag = {**labels, "topic": f"outage-{run}", "partition": "0"}  # the partition's end known
        await until(lambda: REGISTRY.get_sample_value(LAG, lag) == 0, "a poll with no lag", 60)
        await stack("down", "kafka")
        stopped = True
        await until(lambda: REGISTRY.get_sample_value(CONNECTED, labels) == 0, "the loss", 60)
        progress = member.progress
        assert progress is not None
        before = progress.last_progress
        await asyncio.sleep(3)  # idle polls against a broker that is gone
        assert progress.last_progress == before, "a poll without a broker counted as progress"
        await stack("up", "kafka")
        stopped = False
        await until(lambda: REGISTRY.get_sample_value(CONNECTED, labels) == 1, "reconnected", 120)
    finally:
        if stopped:
            await stack("up", "kafka")
        await member.stop()
        await asyncio.wait_for(task, 60)
        await bus.close()
    # stopped on purpose: no series of its own (its partitions are no longer its)
    assert REGISTRY.get_sample_value(CONNECTED, labels) is None
    assert REGISTRY.get_sample_value(LAG, lag) is None
