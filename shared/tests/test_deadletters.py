"""Dead letters for operators: the pure selection, replay on both buses, and `eostream dlq`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from eostream.shared import deadletters as dl
from eostream.shared import deadletters_bus as dlb
from eostream.shared import topics
from eostream.shared.bus import Bus, Delivery
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import WireMessage, encode
from eostream.shared.errors import InvalidEventError
from eostream.shared.events import Event, ItemReplayRequested
from eostream.shared.testing import letter_of, scene

pytestmark = pytest.mark.timeout(180)
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def stamped(message: WireMessage, when: datetime) -> WireMessage:
    headers = dict(message.headers)
    headers["dlq_time"] = when.isoformat().encode()
    return WireMessage(message.key, message.value, headers)


# -- pure ----------------------------------------------------------------------------------------


def test_a_letter_id_is_a_digest_of_its_bytes_and_duplicates_are_one_letter() -> None:
    first = letter_of(encode(scene("A")))
    again = WireMessage(first.key, first.value, dict(reversed(list(first.headers.items()))))
    other = letter_of(encode(scene("B")))
    assert dl.letter_id(first) == dl.letter_id(again)
    assert len(dl.letter_id(first)) == dl.LETTER_ID_LENGTH
    assert dl.letter_id(first) != dl.letter_id(other)
    assert [x.id for x in dl.letters([first, again, other])] == [
        x.id for x in dl.letters([other, first])
    ]
    assert len(dl.letters([first, again, other])) == 2


def test_since_takes_durations_and_iso_times() -> None:
    assert dl.parse_since("2h", NOW) == NOW - timedelta(hours=2)
    assert dl.parse_since("30m", NOW) == NOW - timedelta(minutes=30)
    assert dl.parse_since("1.5d", NOW) == NOW - timedelta(hours=36)
    assert dl.parse_since("2024-04-30T08:00:00Z", NOW) == datetime(2024, 4, 30, 8, tzinfo=UTC)
    assert dl.parse_since("2024-04-30", NOW) == datetime(2024, 4, 30, tzinfo=UTC)  # naive: UTC
    for bad in ("yesterday", "2x", "-3h", "", "999999w"):  # 999999w: an OverflowError before
        with pytest.raises(dl.DeadLetterQueryError, match="--since"):
            dl.parse_since(bad, NOW)


def test_filters_by_topic_reason_time_service_and_id() -> None:
    records = [
        stamped(letter_of(encode(scene("A")), reason="gave up after 4 attempts: db down"), NOW),
        stamped(
            letter_of(encode(scene("B")), topic="eostream.models.promoted", reason="sha mismatch"),
            NOW - timedelta(hours=5),
        ),
        stamped(
            letter_of(
                WireMessage(b"S2X", b"{}", {"stac_source": b"es"}),
                topic="stac:es",
                offset=None,
                reason="missing datetime (properties.datetime is null/absent)",
                service="ingest",
            ),
            NOW - timedelta(days=2),
        ),
    ]
    items = dl.letters(records)
    a, b, stac = (next(i for i in items if i.letter.original_key == k) for k in ("A", "B", "S2X"))

    def keys(**where: object) -> list[str | None]:
        return [i.letter.original_key for i in dl.select(items, dl.LetterFilter(**where))]  # type: ignore[arg-type]

    assert keys() == ["S2X", "B", "A"]  # oldest first
    assert keys(topic="eostream.models.promoted") == ["B"]
    assert keys(topic="stac:*") == ["S2X"]
    assert keys(reason="DB DOWN") == ["A"]  # substring, any case
    assert keys(reason=r"after \d+ attempts") == ["A"]  # regex
    assert keys(reason="datetime (properties") == ["S2X"]  # not a valid regex: substring
    assert keys(since=NOW - timedelta(hours=6)) == ["B", "A"]
    assert keys(service="ingest") == ["S2X"]
    assert keys(id=a.id[:6]) == ["A"]
    assert dl.pick(items, dl.LetterFilter(id=b.id)) == b
    assert stac.is_stac_item and not a.is_stac_item
    with pytest.raises(dl.DeadLetterQueryError, match="3 dead letters match"):
        dl.pick(items, dl.LetterFilter())
    with pytest.raises(dl.DeadLetterQueryError, match="no dead letter matches"):
        dl.pick(items, dl.LetterFilter(id="ffffffff"))
    with pytest.raises(dl.DeadLetterQueryError, match="not a letter id"):
        dl.select(items, dl.LetterFilter(id="xyz!"))


def test_a_replayed_record_is_the_original_without_dlq_headers_plus_where_it_came_from() -> None:
    original = encode(scene("A"))
    item = dl.letters([letter_of(original)])[0]
    replay = dl.replay_of(item)
    assert replay.topic == "eostream.scenes.discovered"
    assert replay.message is not None
    assert (replay.message.key, replay.message.value) == (original.key, original.value)
    assert replay.message.headers == {**original.headers, dl.REPLAYED_FROM: item.id.encode()}


def test_a_rejected_stac_item_replays_as_a_request_to_ingest() -> None:
    value = json.dumps({"id": "S2X", "collection": "sentinel-2-l2a"}).encode()
    headers = {"stac_source": b"es", "stac_href": b"/data/S2X.json"}
    item = dl.letters(
        [letter_of(WireMessage(b"S2X", value, headers), topic="stac:es", offset=None)]
    )[0]
    replay = dl.replay_of(item, requested_by="me@host")
    assert replay.topic == topics.INGEST_REPLAY
    request = replay.request
    assert isinstance(request, ItemReplayRequested)
    assert (request.item_id, request.source_name, request.collection, request.item_href) == (
        "S2X",
        "es",
        "sentinel-2-l2a",
        "/data/S2X.json",
    )
    assert (request.letter_id, request.reason, request.requested_by) == (item.id, "bad", "me@host")
    assert request.id == dl.replay_of(item).request.id  # type: ignore[union-attr]  # deterministic


def test_the_replay_log_reads_back() -> None:
    item = dl.letters([letter_of(encode(scene("A")))])[0]
    record = dl.replay_log_record(dl.replay_of(item), when=NOW, by="me")
    marks = dl.replay_marks([record, WireMessage(None, b"garbage", {})])
    assert marks == {item.id: dl.ReplayMark(item.id, "eostream.scenes.discovered", NOW, "me")}
    todo, done = dl.split_replayed([item], marks)
    assert (todo, [d[0] for d in done]) == ([], [item])


# -- on both buses -------------------------------------------------------------------------------


@pytest.fixture(
    params=["memory", pytest.param("kafka", marks=pytest.mark.stack)],
)
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    made: Bus
    if request.param == "memory":
        made = InMemoryBus(service="dlq-test")
    else:
        from eostream.shared.bus.kafka import KafkaBus
        from eostream.shared.settings import KafkaSettings

        made = KafkaBus(
            KafkaSettings(
                bootstrap_servers=request.getfixturevalue("kafka_bootstrap"),
                topic_prefix=f"dlq{uuid.uuid4().hex[:8]}.",
                retry_backoff_seconds=0.05,
                max_retries=1,
                partitions=2,
            ),
            service="dlq-test",
        )
    await made.start()
    yield made
    await made.close()


async def consume(bus: Bus, topic: str, group: str, want: int, fail: bool) -> list[Event]:
    """Run a consumer until it was given ``want`` events (or 20 s); it rejects each if ``fail``."""
    seen: list[Event] = []
    calls: list[Event] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        calls.append(event)
        if fail:
            raise InvalidEventError(f"cannot handle {event.key} yet")
        seen.append(event)

    consumer = bus.consumer([topic], group, handler)
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(400):
            if len(calls) >= want or task.done():
                break
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
        await task
    return seen


async def test_replay_puts_letters_back_once(bus: Bus) -> None:
    topic = "eostream.scenes.discovered"
    sent = [scene("A"), scene("B")]
    await bus.publish_many(topic, sent)
    # a handler that cannot take them yet: both are dead-lettered
    await consume(bus, topic, "broken", 2, fail=True)
    for _ in range(100):
        found = await dlb.read_letters(bus)
        if len(found) == 2:
            break
        await asyncio.sleep(0.1)
    assert sorted(x.letter.original_key or "" for x in found) == ["A", "B"]

    chosen = dl.select(found, dl.LetterFilter(reason="cannot handle A"))
    dry = await dlb.replay(bus, chosen, dry_run=True)
    assert [(o.action, o.topic) for o in dry] == [("would replay", topic)]
    assert await dlb.read_marks(bus) == {}

    done = await dlb.replay(bus, chosen, requested_by="test")
    assert [o.action for o in done] == ["replayed"]
    again = await dlb.replay(bus, found, requested_by="test")  # A again (skipped), and B
    assert sorted((o.letter.letter.original_key, o.action) for o in again) == [
        ("A", "already replayed"),
        ("B", "replayed"),
    ]
    assert [o.action for o in await dlb.replay(bus, found)] == ["already replayed"] * 2

    # the fixed consumer (a new group reads the topic from the start): the originals, then
    # exactly one replay of each, with the original event ids
    events = await consume(bus, topic, "fixed", 4, fail=False)
    assert sorted(str(e.id) for e in events) == sorted(str(e.id) for e in sent * 2)
    records = await dlb.read_records(bus, topic)
    replayed = [r for r in records if dl.REPLAYED_FROM in r.headers]
    by_key = {x.letter.original_key: x.id for x in found}
    assert sorted((r.key, r.headers[dl.REPLAYED_FROM].decode()) for r in replayed) == [
        (b"A", by_key["A"]),
        (b"B", by_key["B"]),
    ]
