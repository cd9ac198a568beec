"""Replaying a rejected STAC item (`eostream dlq replay`), one active poller per state, and a
leader that stands down finishing the label announcement in flight.

The in-process bus and sqlite; the same on the real stack is in test_replay_stack.py.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import REGISTRY

from eostream.ingest.labelwatch import SOURCE_PREFIX, LabelWatcher
from eostream.ingest.service import (
    REPLAY_GROUP,
    IngestRunner,
    build_ingest,
    build_lock,
    build_sources,
    from_settings,
    running,
)
from eostream.ingest.settings import IngestSettings, LabelsSettings, StaticSource
from eostream.ingest.state import SeenRecord, SqliteStateStore
from eostream.shared import deadletters as dl
from eostream.shared import deadletters_bus as dlb
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.label_catalog import StaticLabelCatalog

from .conftest import JsonDict
from .helpers import LABEL_ITEM, drain, write_catalogue

UP = "eostream_ingest_source_up"

SCENES = topics.SCENES_DISCOVERED


def broken(item: JsonDict, how: str) -> JsonDict:
    """The same item (same id, same `updated`) broken in one way."""
    out = copy.deepcopy(item)
    if how == "no-assets":
        out["assets"] = {}
    elif how == "no-datetime":
        out["properties"]["datetime"] = None
    return out


def settings_for(tmp_path: Path, catalog: Path, **kw: object) -> IngestSettings:
    return IngestSettings(
        bus="memory",
        sources=(StaticSource(name="cat", href=str(catalog)),),
        sqlite_path=tmp_path / "state.sqlite",
        poll_interval_seconds=0.1,
        leader_retry_seconds=0.1,
        **kw,  # type: ignore[arg-type]
    )


async def until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_fixed_item_replayed_is_announced_once_and_a_second_replay_does_nothing(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    good, fixable = earth_search_v1[0], earth_search_v1[1]
    catalog = write_catalogue(tmp_path / "cat", [good, broken(fixable, "no-assets")])
    settings = settings_for(tmp_path, catalog)
    bus = InMemoryBus(service="ingest")
    adapters = from_settings(settings, bus=bus)
    async with running(settings, adapters) as watcher:
        first = await watcher.poll(watcher.sources[0])
        assert (first.published, first.rejected) == (1, 1)
        # the user fixes the item at its source, keeping its id and `updated`
        write_catalogue(tmp_path / "cat", [good, fixable])
        # a poll does not look at it again: this version was rejected
        assert (await watcher.poll(watcher.sources[0])).published == 0

        (letter,) = dl.select(await dlb.read_letters(bus), dl.LetterFilter(topic="stac:cat"))
        assert letter.letter.original_key == fixable["id"]
        assert [o.action for o in await dlb.replay(bus, [letter])] == ["replayed"]
        assert bus.size(topics.INGEST_REPLAY) == 1

        # the service: the poller (every 0.1 s) and the replay consumer, side by side
        stop = asyncio.Event()
        runner = IngestRunner(settings, bus=bus, watcher=watcher, lock=adapters.lock)
        task = asyncio.create_task(runner.run(stop))
        try:
            await until(lambda: bus.size(SCENES) == 2, "the replayed item")
            await asyncio.sleep(0.5)  # several polls more
            ok, detail = runner.readiness()
            assert ok and detail.startswith("leader:"), detail
            # a second replay of the same letter publishes nothing
            again = await dlb.replay(bus, await dlb.read_letters(bus))
            assert [o.action for o in again] == ["already replayed"]
            assert bus.size(topics.INGEST_REPLAY) == 1
        finally:
            stop.set()
            await task
        assert (await watcher.poll(watcher.sources[0])).published == 0

    events = await drain(bus, SCENES, "t")
    assert sorted(e.item_id for e in events) == sorted([good["id"], fixable["id"]])
    assert len(await bus.read_dead_letters(limit=10)) == 1  # nothing dead-lettered again
    summary = {s.source: s for s in await _summary(settings)}
    assert (summary["cat"].published, summary["cat"].rejected) == (2, 0)


async def _summary(settings: IngestSettings) -> list:  # type: ignore[type-arg]
    store = SqliteStateStore(settings.sqlite_path)
    await store.open()
    try:
        return await store.summary()
    finally:
        await store.close()


async def test_a_replayed_item_still_broken_is_dead_lettered_again_with_the_reason_now(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    item = earth_search_v1[2]
    catalog = write_catalogue(tmp_path / "cat", [broken(item, "no-assets")])
    settings = settings_for(tmp_path, catalog)
    bus = InMemoryBus(service="ingest")
    adapters = from_settings(settings, bus=bus)
    async with running(settings, adapters) as watcher:
        assert (await watcher.poll(watcher.sources[0])).rejected == 1
        # "fixed" the wrong way: assets back, datetime lost
        write_catalogue(tmp_path / "cat", [broken(item, "no-datetime")])
        (first,) = await dlb.read_letters(bus)
        await dlb.replay(bus, [first])
        stop = asyncio.Event()
        runner = IngestRunner(settings, bus=bus, watcher=watcher, lock=adapters.lock)
        task = asyncio.create_task(runner.run(stop))
        try:
            await until(lambda: bus.size(bus.dead_letter_topic) == 2, "the second rejection")
        finally:
            stop.set()
            await task
        found = await dlb.read_letters(bus)
    assert bus.size(SCENES) == 0
    second = next(x for x in found if x.id != first.id)
    assert "missing assets" in first.letter.reason
    assert "missing datetime" in second.letter.reason
    assert second.replayed_from == first.id
    assert second.letter.original_topic == "stac:cat"


async def test_two_watchers_on_one_state_one_polls_the_other_stands_by_then_takes_over(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    items = earth_search_v1[:6]
    catalog = write_catalogue(tmp_path / "cat", items[:4])
    settings = settings_for(tmp_path, catalog)
    bus = InMemoryBus(service="ingest")  # one bus: what both replicas publish, in one place

    async def replica() -> tuple[IngestRunner, SqliteStateStore]:
        store = SqliteStateStore(settings.sqlite_path)
        await store.open()
        runner = build_ingest(
            settings,
            bus=bus,
            state=store,
            lock=build_lock(settings),
            sources=build_sources(settings),
        )
        return runner, store

    (a, store_a), (b, store_b) = await replica(), await replica()
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))
    await until(lambda: a.leadership.role == "leader", "a to lead")
    task_b = asyncio.create_task(b.run(stop_b))
    try:
        await until(lambda: b.leadership.role == "standby", "b to stand by")
        await until(lambda: bus.size(SCENES) == 4, "the first items")
        ok, detail = b.readiness()
        assert ok and detail.startswith("standby: another ingest replica holds the file lock")
        write_catalogue(tmp_path / "cat", items[:5])
        await until(lambda: bus.size(SCENES) == 5, "an item added while a leads")
        await asyncio.sleep(0.5)
        assert b.leadership.role == "standby" and b.leadership.terms == 0

        stop_a.set()  # the active one stops (its lock goes with it)
        await task_a
        await until(lambda: b.leadership.role == "leader", "b to take over")
        write_catalogue(tmp_path / "cat", items)
        await until(lambda: bus.size(SCENES) == 6, "an item added after the take-over")
        await asyncio.sleep(0.5)
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(task_a, task_b)
        await store_a.close()
        await store_b.close()
    events = await drain(bus, SCENES, "t")
    assert sorted(e.item_id for e in events) == sorted(i["id"] for i in items)  # each once


async def test_a_replica_that_stops_leading_leaves_no_health_series_behind(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    """A leader that resigns stops its consumers and its polling on purpose: its last
    "consumer up 0" and "source up 0" kept EostreamConsumerNotRunning (critical) and
    EostreamIngestSourceDown firing on a healthy standby."""
    catalog = write_catalogue(tmp_path / "cat", earth_search_v1[:2])
    settings = settings_for(tmp_path, catalog)
    store = SqliteStateStore(settings.sqlite_path)
    await store.open()
    runner = build_ingest(
        settings,
        bus=InMemoryBus(service="ingest"),
        state=store,
        lock=build_lock(settings),
        sources=build_sources(settings),
    )
    source = runner.watcher.sources[0].config.name
    consumer = {"service": "ingest", "group": REPLAY_GROUP}
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await until(lambda: REGISTRY.get_sample_value(UP, {"source": source}) == 1, "a poll")
        assert REGISTRY.get_sample_value("eostream_consumer_up", consumer) == 1
    finally:
        stop.set()
        await task
        await store.close()
    assert runner.consumers is not None
    runner.consumers.liveness()  # a /livez probe after the stop made the series again
    assert REGISTRY.get_sample_value(UP, {"source": source}) is None
    assert REGISTRY.get_sample_value("eostream_consumer_up", consumer) is None
    assert REGISTRY.get_sample_value("eostream_consumer_stalled", consumer) is None


class HeldStateStore(SqliteStateStore):
    """The real sqlite state, whose recording of a label announcement waits for ``release``:
    the moment between the broker's acknowledgement and the seen-set's row."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.holding, self.release = asyncio.Event(), asyncio.Event()

    async def mark_seen(self, source: str, records: Sequence[SeenRecord]) -> None:
        if source.startswith(SOURCE_PREFIX):
            self.holding.set()
            await self.release.wait()
        await super().mark_seen(source, records)


async def test_a_label_announcement_in_flight_when_the_leader_stops_is_finished_not_cut(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    """The leader stops between publishing a DatasetUpdated and recording it: the label watcher
    finishes its poll as the scene watcher does (it was cancelled there, so the next leader
    announced the same labels again)."""
    settings = settings_for(
        tmp_path,
        write_catalogue(tmp_path / "cat", earth_search_v1[:1]),
        labels=LabelsSettings(poll_interval_seconds=0.1, settle_seconds=0),
    )
    labels = StaticLabelCatalog(tmp_path / "labels")
    labels.add("boadella-water", [LABEL_ITEM])
    bus = InMemoryBus(service="ingest")
    store = HeldStateStore(settings.sqlite_path)
    await store.open()
    stop = asyncio.Event()
    try:
        runner = build_ingest(
            settings,
            bus=bus,
            state=store,
            lock=build_lock(settings),
            sources=build_sources(settings),
            labels=labels,
        )
        task = asyncio.create_task(runner.run(stop))
        await until(store.holding.is_set, "the announcement to be acknowledged")
        assert bus.size(topics.DATASETS_UPDATED) == 1
        stop.set()  # the leader stands down while the row is being written
        await asyncio.sleep(0.3)
        store.release.set()
        await asyncio.wait_for(task, 20)

        # the next leader finds the labels announced
        [again] = await LabelWatcher(labels, store=store, bus=bus).poll()
        assert not again.published
    finally:
        stop.set()
        store.release.set()
        await store.close()
    assert bus.size(topics.DATASETS_UPDATED) == 1
