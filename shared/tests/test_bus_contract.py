"""One contract for the bus, run unchanged against the in-process adapter, the durable embedded
bus (SQLite) and real Kafka."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from eostream.shared.bus import (
    Bus,
    Consumers,
    ConsumerStopped,
    Delivery,
    RetryPolicy,
    heartbeat,
)
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.bus.sqlite import SqliteBus
from eostream.shared.bus.supervisor import SupervisedConsumer
from eostream.shared.codec import WireMessage, encode
from eostream.shared.errors import InvalidEventError, RetryableError
from eostream.shared.events import Event, SceneDiscovered
from eostream.shared.settings import ConsumerSupervision
from eostream.shared.testing import scene

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("kafka", marks=pytest.mark.stack),
        # a namespaced deployment: same contract, topics prefixed on the broker only
        pytest.param("kafka-prefixed", marks=pytest.mark.stack),
    ]
)
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    made: Bus
    if request.param == "memory":
        made = InMemoryBus(service="contract", dead_letter_topic=f"dlq-{uuid.uuid4().hex[:8]}")
    elif request.param == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        made = SqliteBus(
            tmp_path / "bus.sqlite",
            service="contract",
            dead_letter_topic=f"dlq-{uuid.uuid4().hex[:8]}",
            policy=RetryPolicy(max_retries=2, backoff_seconds=0.05),
        )
    else:
        from eostream.shared.bus.kafka import KafkaBus
        from eostream.shared.settings import KafkaSettings

        bootstrap = request.getfixturevalue("kafka_bootstrap")
        made = KafkaBus(
            KafkaSettings(
                bootstrap_servers=bootstrap,
                dead_letter_topic=f"contract-dlq-{uuid.uuid4().hex[:8]}",
                partitions=3,
                retry_backoff_seconds=0.05,
                max_retries=2,
                topic_prefix=f"ns{uuid.uuid4().hex[:6]}." if request.param.endswith("ed") else "",
            ),
            service="contract",
        )
    await made.start()
    yield made
    await made.close()


@pytest.fixture
def topic() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


class Recorder:
    """A handler that records what it saw and can be told to fail."""

    def __init__(self, fail: Callable[[Event, int], Exception | None] | None = None) -> None:
        self.events: list[Event] = []
        self.deliveries: list[Delivery] = []
        self.calls = 0
        self._fail = fail

    async def __call__(self, event: Event, delivery: Delivery) -> None:
        self.calls += 1
        if self._fail is not None and (exc := self._fail(event, self.calls)) is not None:
            raise exc
        self.events.append(event)
        self.deliveries.append(delivery)


async def run_until(
    bus: Bus,
    topics: list[str],
    group: str,
    handler: Recorder,
    done: Callable[[], bool],
    *,
    dead_letter: bool = True,
) -> None:
    consumer = bus.consumer(topics, group, handler, dead_letter=dead_letter)
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(60):
            while not done():
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
        await task


async def test_published_events_arrive_intact_with_their_key(bus: Bus, topic: str) -> None:
    sent = [scene(f"S2A_T{i:03d}") for i in range(20)]
    await bus.publish_many(topic, sent[:10])
    for event in sent[10:]:
        await bus.publish(topic, event)
    seen = Recorder()
    await run_until(bus, [topic], "g1", seen, lambda: len(seen.events) >= 20)

    assert sorted(e.id for e in seen.events) == sorted(e.id for e in sent)
    by_id = {e.id: e for e in sent}
    for got, delivery in zip(seen.events, seen.deliveries, strict=True):
        assert got == by_id[got.id]
        assert delivery.key == got.key
        assert delivery.headers["ce_type"] == "io.eostream.scene.discovered"
        assert delivery.headers["ce_id"] == str(got.id)
        assert delivery.headers["ce_specversion"] == "1.0"


async def test_events_with_one_key_stay_in_order(bus: Bus, topic: str) -> None:
    sent = [scene("S2B_SAME", cloud_cover=float(i)) for i in range(30)]
    await bus.publish_many(topic, sent)
    seen = Recorder()
    await run_until(bus, [topic], "order", seen, lambda: len(seen.events) >= 30)
    assert [e.id for e in seen.events] == [e.id for e in sent]


async def test_poison_message_goes_to_dead_letter_and_the_rest_flows(bus: Bus, topic: str) -> None:
    await bus.publish(topic, scene("BEFORE"))
    await bus.publish_raw(topic, WireMessage(key=b"BEFORE", value=b"\xff\xfenot json", headers={}))
    good = encode(scene("X"))
    bad_payload = json.dumps({**json.loads(good.value), "processing_level": "L9Z"}).encode()
    await bus.publish_raw(
        topic, WireMessage(key=b"BEFORE", value=bad_payload, headers=good.headers)
    )
    # AFTER shares the poison records' key, so it sits behind them on their partition: once it
    # is handled, both poison records have been dealt with (a different key could overtake them).
    after = encode(scene("AFTER"))
    await bus.publish_raw(
        topic, WireMessage(key=b"BEFORE", value=after.value, headers=after.headers)
    )

    seen = Recorder()
    await run_until(bus, [topic], "poison", seen, lambda: len(seen.events) >= 2)
    assert sorted(e.key for e in seen.events) == ["AFTER", "BEFORE"]

    letters = await bus.read_dead_letters(limit=10)
    assert len(letters) == 2
    undecodable, invalid = letters
    assert undecodable.error_type == "InvalidEventError"
    assert "CloudEvents" in undecodable.reason
    assert undecodable.original_value == b"\xff\xfenot json"
    assert invalid.error_type == "InvalidEventError"
    assert "processing_level" in invalid.reason
    for letter in letters:
        assert letter.original_topic == topic
        assert letter.original_offset is not None
        assert letter.original_partition is not None
        assert letter.service == "contract"


async def test_a_follower_skips_poison_and_dead_letters_nothing(bus: Bus, topic: str) -> None:
    """A follower (a client waiting for its answer, a group per request) reads the history the
    services have dead-lettered already: each one copied the poison there again."""
    await bus.publish_raw(topic, WireMessage(key=b"K", value=b"\xff\xfenot json", headers={}))
    after = encode(scene("AFTER"))
    await bus.publish_raw(topic, WireMessage(key=b"K", value=after.value, headers=after.headers))
    first, second = Recorder(), Recorder()
    await run_until(
        bus, [topic], "follower-1", first, lambda: bool(first.events), dead_letter=False
    )
    await run_until(
        bus, [topic], "follower-2", second, lambda: bool(second.events), dead_letter=False
    )
    assert [e.key for e in first.events] == [e.key for e in second.events] == ["AFTER"]
    assert await bus.read_dead_letters(limit=10) == []
    seen = Recorder()  # a service's consumer still dead-letters it, once
    await run_until(bus, [topic], "service", seen, lambda: bool(seen.events))
    assert len(await bus.read_dead_letters(limit=10)) == 1


async def test_retryable_errors_are_retried_then_succeed(bus: Bus, topic: str) -> None:
    await bus.publish(topic, scene("FLAKY"))
    seen = Recorder(fail=lambda _e, call: RetryableError("db down") if call <= 2 else None)
    await run_until(bus, [topic], "retry", seen, lambda: len(seen.events) >= 1)
    assert seen.calls == 3
    assert await bus.read_dead_letters(limit=5, timeout=1) == []


async def test_retries_are_bounded_then_dead_lettered(bus: Bus, topic: str) -> None:
    # One key, so the second event arrives only after the first was dealt with.
    await bus.publish(topic, scene("DOOMED"))
    await bus.publish(topic, scene("DOOMED", cloud_cover=5.0))
    seen = Recorder(
        fail=lambda e, _c: RetryableError("still down") if e.cloud_cover is None else None  # type: ignore[attr-defined]
    )
    await run_until(bus, [topic], "bounded", seen, lambda: len(seen.events) >= 1)
    letters = await bus.read_dead_letters(limit=5)
    assert [letter.original_key for letter in letters] == ["DOOMED"]
    assert letters[0].reason.startswith("gave up after")
    assert letters[0].attempts >= 2


async def test_handler_bug_stops_the_consumer_without_committing(bus: Bus, topic: str) -> None:
    await bus.publish(topic, scene("BUG"))
    crashing = Recorder(fail=lambda _e, _c: KeyError("a bug"))
    consumer = bus.consumer([topic], "stopper", crashing)
    with pytest.raises(ConsumerStopped, match="KeyError"):
        async with asyncio.timeout(60):
            await consumer.run()
    # The record was not committed: the restarted service gets it again.
    healthy = Recorder()
    await run_until(bus, [topic], "stopper", healthy, lambda: len(healthy.events) >= 1)
    assert [e.key for e in healthy.events] == ["BUG"]


async def test_a_group_resumes_after_its_commits_and_groups_are_independent(
    bus: Bus, topic: str
) -> None:
    await bus.publish_many(topic, [scene(f"FIRST{i}") for i in range(5)])
    first = Recorder()
    await run_until(bus, [topic], "resume", first, lambda: len(first.events) >= 5)

    await bus.publish_many(topic, [scene(f"SECOND{i}") for i in range(3)])
    second = Recorder()
    await run_until(bus, [topic], "resume", second, lambda: len(second.events) >= 3)
    assert sorted(e.key for e in second.events) == [f"SECOND{i}" for i in range(3)]

    other = Recorder()
    await run_until(bus, [topic], "other-group", other, lambda: len(other.events) >= 8)
    assert len(other.events) == 8


async def test_invalid_event_raised_by_a_handler_is_dead_lettered(bus: Bus, topic: str) -> None:
    await bus.publish(topic, scene("REJECTED"))
    await bus.publish(topic, scene("REJECTED", bands=("B02", "B03", "B04", "B08")))
    seen = Recorder(
        fail=lambda e, _c: InvalidEventError("no B08 asset") if len(e.bands) == 3 else None  # type: ignore[attr-defined]
    )
    await run_until(bus, [topic], "reject", seen, lambda: len(seen.events) >= 1)
    letters = await bus.read_dead_letters(limit=5)
    assert [(letter.original_key, letter.reason) for letter in letters] == [
        ("REJECTED", "no B08 asset")
    ]


@pytest.mark.stack
async def test_a_topic_prefix_namespaces_the_broker_topics_only(kafka_bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from eostream.shared.bus.kafka import KafkaBus
    from eostream.shared.settings import KafkaSettings

    prefix, topic = f"ns{uuid.uuid4().hex[:6]}.", f"contract-{uuid.uuid4().hex[:10]}"
    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix), service="contract"
    )
    plain = KafkaBus(KafkaSettings(bootstrap_servers=kafka_bootstrap), service="contract")
    await bus.start()
    await plain.start()
    try:
        await bus.publish(topic, scene("NAMESPACED"))
        await plain.publish(topic, scene("PLAIN"))
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            names = set(await admin.list_topics())
        finally:
            await admin.close()
        assert {prefix + topic, topic, prefix + "eostream.deadletter"} <= names

        seen = Recorder()
        await run_until(bus, [topic], "ns", seen, lambda: len(seen.events) >= 1)
        await asyncio.sleep(1.0)  # a leak from the plain topic would arrive by now
        assert [e.item_id for e in seen.events if isinstance(e, SceneDiscovered)] == ["NAMESPACED"]
        assert seen.deliveries[0].topic == topic  # handlers see the plain name
    finally:
        await bus.close()
        await plain.close()


# -- supervision: a consumer that ends unasked comes back; a stuck one is reported -----------


def supervised(
    bus: Bus, topic: str, group: str, handler: Recorder, **config: float
) -> SupervisedConsumer:
    settings = ConsumerSupervision(
        **{"restart_backoff_seconds": 0.05, "restart_backoff_max_seconds": 0.2, **config}
    )
    return SupervisedConsumer(
        lambda: bus.consumer([topic], group, handler),
        service="contract",
        group=group,
        supervision=settings,
    )


async def until(done: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Wait for a condition; the limit only ends a test that would otherwise hang."""
    try:
        async with asyncio.timeout(seconds):
            while not done():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"still waiting for {what} after {seconds:.0f}s") from None


async def test_a_consumer_stopped_by_a_handler_error_is_started_again_and_the_record_redelivered(
    bus: Bus, topic: str
) -> None:
    await bus.publish(topic, scene("ONCE-BROKEN"))
    handler = Recorder(fail=lambda _e, call: KeyError("a bug") if call == 1 else None)
    member = supervised(bus, topic, "comeback", handler)
    task = asyncio.create_task(member.run())
    try:
        await until(lambda: len(handler.events) >= 1, "the redelivered record")
        assert member.restarts == 1 and "KeyError" in member.last_error
        assert [e.key for e in handler.events] == ["ONCE-BROKEN"]
        await until(lambda: member.ready, "the restarted consumer to be ready")
        assert member.liveness()[0] and member.readiness()[0]
    finally:
        await member.stop()
        await task
    assert member.readiness() == (False, "comeback: stopped")
    assert await bus.read_dead_letters(limit=5, timeout=1) == []


async def test_a_consumer_that_keeps_failing_fails_liveness_and_readiness(
    bus: Bus, topic: str
) -> None:
    await bus.publish(topic, scene("ALWAYS-BROKEN"))
    handler = Recorder(fail=lambda _e, _c: KeyError("a bug"))
    member = supervised(bus, topic, "crashloop", handler, crash_loop_restarts=3)
    task = asyncio.create_task(member.run())
    try:
        await until(lambda: member.failures_in_a_row >= 3, "three restarts in a row")
        alive, detail = member.liveness()
        assert not alive and "crash-looping" in detail and "KeyError" in detail
    finally:
        await member.stop()
        await task


async def test_a_handler_stuck_with_records_waiting_is_reported_stalled(
    bus: Bus, topic: str
) -> None:
    await bus.publish_many(topic, [scene("STUCK"), scene("STUCK", cloud_cover=1.0)])
    release = asyncio.Event()

    async def stuck(event: Event, delivery: Delivery) -> None:
        await release.wait()

    consumers = Consumers("contract", ConsumerSupervision(stall_seconds=0.5))
    member = consumers.add("stuck", lambda: bus.consumer([topic], "stuck", stuck))
    task = asyncio.create_task(member.run())
    try:
        await until(lambda: not consumers.liveness()[0], "the stuck consumer to be reported")
        _, detail = consumers.liveness()
        assert "stalled" in detail and "waiting" in detail
        assert member.ready  # it runs: restarting it is the orchestrator's call, via liveness
        release.set()
        await until(lambda: consumers.liveness()[0], "liveness to recover once records move")
    finally:
        release.set()
        await member.stop()
        await task


async def test_a_heartbeat_from_a_long_handler_counts_as_progress(bus: Bus, topic: str) -> None:
    await bus.publish(topic, scene("LONG"))
    beats: list[float] = []

    async def long_running(event: Event, delivery: Delivery) -> None:
        progress = member.progress
        assert progress is not None and progress.in_flight_since is not None
        progress.last_progress = 0.0  # as if the handler had run for a very long time
        await asyncio.to_thread(heartbeat)  # from a worker thread, as the trainer does
        beats.append(progress.last_progress)

    member = SupervisedConsumer(
        lambda: bus.consumer([topic], "beats", long_running),
        service="contract",
        group="beats",
    )
    task = asyncio.create_task(member.run())
    try:
        await until(lambda: len(beats) == 1, "the handler")
        assert beats[0] > 0.0
    finally:
        await member.stop()
        await task
