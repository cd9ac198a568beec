"""The durable embedded bus beyond the shared contract (test_bus_contract.py runs it too): a
consumer SIGKILLed mid-handler loses nothing and repeats nothing committed; a group's records go
to one consumer at a time; records and headers survive a reopened file."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eostream.shared.bus import Delivery
from eostream.shared.bus.sqlite import SqliteBus
from eostream.shared.codec import WireMessage
from eostream.shared.events import Event, SceneDiscovered

pytestmark = pytest.mark.timeout(120)

CONSUMER = Path(__file__).with_name("sqlite_bus_consumer.py")
TOPIC = "eostream.scenes.discovered"


def scene(item_id: str) -> SceneDiscovered:
    return SceneDiscovered(
        item_id=item_id,
        item_href=f"https://example.test/items/{item_id}",
        datetime=datetime(2024, 5, 1, 10, 30, tzinfo=UTC),
        processing_level="L2A",
        bands=("B02", "B03", "B04"),
        source_name="sigkill",
    )


async def until(done: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Wait for a condition; the limit only ends a test that would otherwise hang."""
    try:
        async with asyncio.timeout(seconds):
            while not done():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"still waiting for {what} after {seconds:.0f}s") from None


class Keys:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int | None]] = []

    async def __call__(self, event: Event, delivery: Delivery) -> None:
        self.seen.append((event.key, delivery.offset))

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.seen]


async def test_a_consumer_sigkilled_mid_handler_loses_nothing_and_repeats_nothing_committed(
    tmp_path: Path,
) -> None:
    db, effects, started = tmp_path / "bus.sqlite", tmp_path / "effects", tmp_path / "started"
    bus = SqliteBus(db, service="sigkill-test")
    await bus.start()
    await bus.publish_many(TOPIC, [scene("A"), scene("B"), scene("HANG"), scene("C")])

    process = subprocess.Popen(
        [sys.executable, str(CONSUMER), str(db), TOPIC, "g", str(effects), str(started)]
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():  # the handler of HANG has begun
            assert process.poll() is None, "the consumer process ended on its own"
            assert time.monotonic() < deadline, "the consumer never reached HANG"
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert started.read_text().strip() == "HANG@2"
    assert effects.read_text().split() == ["A", "B"]  # handled and committed before the kill

    # The next consumer of the group starts at the record in flight, and repeats nothing before.
    again = Keys()
    consumer = bus.consumer([TOPIC], "g", again)
    task = asyncio.create_task(consumer.run())
    try:
        await until(lambda: len(again.seen) >= 2, "the uncommitted records")
        await asyncio.sleep(0.3)  # a repeated record would arrive by now
    finally:
        await consumer.stop()
        await task
    assert again.seen == [("HANG", 2), ("C", 3)]
    await bus.close()


async def test_a_group_goes_to_one_consumer_at_a_time_and_moves_when_it_stops(
    tmp_path: Path,
) -> None:
    # Two bus objects on one file stand for two processes (each with its own connection).
    one = SqliteBus(tmp_path / "bus.sqlite", service="one")
    two = SqliteBus(tmp_path / "bus.sqlite", service="two")
    await one.start()
    await two.start()
    await one.publish_many(TOPIC, [scene(f"FIRST{i}") for i in range(10)])
    first, second = Keys(), Keys()
    c1 = one.consumer([TOPIC], "shared", first)
    t1 = asyncio.create_task(c1.run())
    await until(lambda: len(first.seen) == 10, "the first consumer's records")
    c2 = two.consumer([TOPIC], "shared", second)
    t2 = asyncio.create_task(c2.run())
    await until(lambda: c2.ready, "the second consumer")
    await two.publish_many(TOPIC, [scene(f"SECOND{i}") for i in range(5)])
    await until(lambda: len(first.seen) == 15, "the records published meanwhile")
    assert second.seen == []  # the holder of the group's lease has them all

    await c1.stop()
    await t1
    await one.publish(TOPIC, scene("AFTER"))
    await until(lambda: len(second.seen) == 1, "the take-over by the second consumer")
    await c2.stop()
    await t2
    assert second.seen == [("AFTER", 15)]
    assert [o for _, o in first.seen] == list(range(15))
    await one.close()
    await two.close()


async def test_records_and_their_headers_survive_a_reopened_log(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    bus = SqliteBus(path, service="reopen")
    await bus.start()
    raw = WireMessage(key=None, value=b"\x00\xff", headers={"h": b"\xff\x00bytes", "e": b""})
    await bus.publish_raw("raw", raw)
    await bus.publish(TOPIC, scene("KEPT"))
    await bus.close()

    reopened = SqliteBus(path, service="reopen")
    assert reopened.records("raw") == [raw]
    assert reopened.size(TOPIC) == 1
    seen = Keys()
    consumer = reopened.consumer([TOPIC], "late", seen)
    task = asyncio.create_task(consumer.run())
    await until(lambda: len(seen.seen) == 1, "the record written before the reopen")
    await consumer.stop()
    await task
    assert seen.seen == [("KEPT", 0)]
    await reopened.close()


async def test_a_consumer_on_another_threads_loop_gets_what_this_loop_publishes(
    tmp_path: Path,
) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite", service="threads")
    await bus.start()
    seen = Keys()
    stop = threading.Event()

    async def consume() -> None:
        consumer = bus.consumer([TOPIC], "threaded", seen)
        task = asyncio.create_task(consumer.run())
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await consumer.stop()
        await task

    thread = threading.Thread(target=lambda: asyncio.run(consume()))
    thread.start()
    try:
        for i in range(20):
            await bus.publish(TOPIC, scene(f"T{i}"))
        await until(lambda: len(seen.seen) == 20, "the records in the other thread")
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert seen.seen == [(f"T{i}", i) for i in range(20)]
    await bus.close()
