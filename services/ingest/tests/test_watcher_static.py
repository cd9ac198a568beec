"""The watcher on the static catalogues of the data folder, with the in-process bus and sqlite."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from eostream.ingest import mapping
from eostream.ingest import watcher as watcher_module
from eostream.ingest.errors import SourceUnavailable
from eostream.ingest.service import build_sources, from_settings, running
from eostream.ingest.settings import IngestSettings, StacApiSource, StaticSource
from eostream.ingest.state import SeenRecord, SqliteStateStore
from eostream.ingest.watcher import Watcher
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.ops import OpsServer, create_ops_app

from .conftest import JsonDict, eurosat_rewrites, malformed_items
from .helpers import drain

SCENES = topics.SCENES_DISCOVERED
DOWN_3 = 'eostream_ingest_source_errors_total{error_type="SourceUnavailable",source="down"} 3'


def _settings(
    tmp_path: Path, *sources: StacApiSource | StaticSource, **kw: object
) -> IngestSettings:
    return IngestSettings(
        bus="memory",
        sources=sources,
        sqlite_path=tmp_path / "state.sqlite",
        **kw,  # type: ignore[arg-type]
    )


def _eurosat(data_dir: Path, catalog: Path, **kw: object) -> StaticSource:
    return StaticSource(
        name="eurosat",
        href=str(catalog),
        href_rewrites=eurosat_rewrites(data_dir),
        **kw,
    )


async def test_static_catalogues_announce_each_item_once_across_restarts(
    tmp_path: Path, data_dir: Path, eurosat_catalog: Path, rkh_item_path: Path
) -> None:
    settings = _settings(
        tmp_path,
        _eurosat(data_dir, eurosat_catalog, assume_level="L1C"),
        StaticSource(name="rkh", href=str(rkh_item_path)),
    )
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        reports = [await watcher.poll(w) for w in watcher.sources]
        assert [(r.published, r.rejected) for r in reports] == [(100, 0), (1, 0)]
        again = [await watcher.poll(w) for w in watcher.sources]
        assert [(r.published, r.duplicates) for r in again] == [(0, 100), (0, 1)]
    async with running(
        settings, from_settings(settings, bus=bus)
    ) as restarted:  # same sqlite file: a restart
        assert sum([(await restarted.poll(w)).published for w in restarted.sources]) == 0

    events = await drain(bus, SCENES, "t")
    assert len(events) == 101
    assert len({e.item_id for e in events}) == 101
    rkh = next(e for e in events if e.source_name == "rkh")
    assert (rkh.tile, rkh.processing_level, rkh.item_href) == ("29RKH", "L2A", str(rkh_item_path))
    patches = [e for e in events if e.source_name == "eurosat"]
    assert {e.processing_level for e in patches} == {"L1C"}
    assert all(len(e.bands) == 13 for e in patches)
    # hrefs were rewritten to local files that exist
    assert all(Path(e.item_href).is_file() for e in patches)


async def test_eurosat_without_an_assumed_level_is_dead_lettered(
    tmp_path: Path, data_dir: Path, eurosat_catalog: Path
) -> None:
    settings = _settings(tmp_path, _eurosat(data_dir, eurosat_catalog))
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        report = await watcher.poll(watcher.sources[0])
    assert (report.published, report.rejected) == (0, 100)
    dead = await bus.read_dead_letters(limit=1000)
    assert len(dead) == 100
    assert all("unknown processing level" in d.reason for d in dead)


def _catalogue(tmp_path: Path, items: list[JsonDict]) -> Path:
    root = tmp_path / "catalogue"
    root.mkdir()
    links = []
    for n, item in enumerate(items):
        (root / f"item-{n}.json").write_text(json.dumps(item))
        links.append({"rel": "item", "href": f"./item-{n}.json"})
    catalog = {
        "type": "Catalog",
        "id": "mixed",
        "stac_version": "1.0.0",
        "description": "valid and malformed items",
        "links": links,
    }
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root / "catalog.json"


async def test_malformed_items_go_to_the_dead_letter_topic_and_valid_ones_flow(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    broken = malformed_items(earth_search_v1[0])
    mixed: list[JsonDict] = []
    for valid, bad in zip(earth_search_v1, broken.values(), strict=False):
        mixed += [valid, bad]
    mixed += earth_search_v1[len(broken) :] + list(broken.values())[len(earth_search_v1) :]
    settings = _settings(
        tmp_path, StaticSource(name="mixed", href=str(_catalogue(tmp_path, mixed)))
    )
    bus = InMemoryBus(service="ingest")
    labels = {"service": "ingest", "topic": "stac:mixed", "error_type": "ItemRejected"}
    before = REGISTRY.get_sample_value("eostream_dead_letters_total", labels) or 0.0
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        report = await watcher.poll(watcher.sources[0])
        second = await watcher.poll(watcher.sources[0])
    assert (report.published, report.rejected) == (10, len(broken))
    # counted in the shared dead-letter metric like a consumer's dead letters
    after = REGISTRY.get_sample_value("eostream_dead_letters_total", labels)
    assert after == before + len(broken)
    assert (second.published, second.rejected) == (0, 0)  # rejected items are not re-sent
    events = await drain(bus, SCENES, "t")
    assert sorted(e.item_id for e in events) == sorted(i["id"] for i in earth_search_v1)
    dead = {d.original_key: d for d in await bus.read_dead_letters(limit=100)}
    assert set(dead) == {i["id"] for i in broken.values()}
    for kind, item in broken.items():
        letter = dead[item["id"]]
        assert letter.error_type == "ItemRejected" and letter.service == "ingest"
        assert letter.original_topic == "stac:mixed"
        # the raw item, for replay (compared as text: a NaN is not equal to itself)
        assert json.dumps(json.loads(letter.original_value)) == json.dumps(item)
        expected = {
            "no-assets": "missing assets",
            "no-band-assets": "missing assets",
            "unknown-level": "unknown processing level",
            "no-datetime": "missing datetime",
            "properties-list": "properties must be an object",
        }
        want = "bad bbox" if kind.startswith("bbox-") else expected.get(kind, "bad geometry")
        assert want in letter.reason


async def test_an_item_that_breaks_the_mapping_unforeseen_is_dead_lettered_not_the_poll(
    tmp_path: Path, earth_search_v1: list[JsonDict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever an item makes the mapping raise stays that item's: it is dead-lettered with the
    error, the items after it are announced and the next poll goes on (an error the rules did
    not foresee, such as a text in the bbox before it was checked, failed the whole poll and
    so every poll after it)."""
    poison = earth_search_v1[3]["id"]
    real = mapping.to_scene

    def to_scene(item: JsonDict, **kw: Any) -> Any:
        if item["id"] == poison:
            raise ZeroDivisionError("an error no rule foresaw")
        return real(item, **kw)

    monkeypatch.setattr(watcher_module, "to_scene", to_scene)
    settings = _settings(
        tmp_path, StaticSource(name="mixed", href=str(_catalogue(tmp_path, earth_search_v1)))
    )
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        report = await watcher.poll(watcher.sources[0])
        second = await watcher.poll(watcher.sources[0])
    assert (report.published, report.rejected) == (len(earth_search_v1) - 1, 1)
    assert (second.published, second.rejected) == (0, 0)
    events = await drain(bus, SCENES, "t")
    assert sorted(e.item_id for e in events) == sorted(
        i["id"] for i in earth_search_v1 if i["id"] != poison
    )
    [letter] = await bus.read_dead_letters(limit=10)
    assert letter.original_key == poison and letter.error_type == "ItemRejected"
    assert letter.reason.endswith("unreadable item: ZeroDivisionError: an error no rule foresaw")


class _CrashAfterPublish(SqliteStateStore):
    """A real sqlite store whose first mark_seen fails: a crash after the broker's ack."""

    crashed = False

    async def mark_seen(self, source: str, records: object) -> None:
        if not self.crashed:
            self.crashed = True
            raise OSError("simulated crash between publish and mark_seen")
        await super().mark_seen(source, records)  # type: ignore[arg-type]


async def test_a_crash_between_publish_and_mark_repeats_with_the_same_event_id(
    tmp_path: Path, rkh_item_path: Path
) -> None:
    settings = _settings(tmp_path, StaticSource(name="rkh", href=str(rkh_item_path)))
    bus = InMemoryBus(service="ingest")
    store = _CrashAfterPublish(settings.sqlite_path)
    await store.open()
    watcher = Watcher(
        build_sources(settings),
        store=store,
        bus=bus,
        topic=SCENES,
        dead_letter_topic="eostream.deadletter",
    )
    try:
        try:
            await watcher.poll(watcher.sources[0])
        except OSError:
            pass
        assert (await watcher.poll(watcher.sources[0])).published == 1
        assert (await watcher.poll(watcher.sources[0])).published == 0
    finally:
        await store.close()
    events = await drain(bus, SCENES, "t")
    assert len(events) == 2  # at least once on the wire ...
    assert len({e.id for e in events}) == 1  # ... with one idempotency key


async def test_backfill_replace_announces_again_with_new_ids(
    tmp_path: Path, rkh_item_path: Path
) -> None:
    settings = _settings(tmp_path, StaticSource(name="rkh", href=str(rkh_item_path)))
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        source = watcher.sources[0]
        assert (await watcher.poll(source)).published == 1
        from datetime import UTC, datetime

        start, end = datetime(2020, 2, 1, tzinfo=UTC), datetime(2020, 3, 1, tzinfo=UTC)
        plain = await watcher.poll(source, start=start, end=end, backfill=True)
        assert (plain.published, plain.duplicates) == (0, 1)
        outside = await watcher.poll(
            source, start=end, end=datetime(2021, 1, 1, tzinfo=UTC), backfill=True, replace=True
        )
        assert (outside.published, outside.filtered) == (0, 1)
        again = await watcher.poll(source, start=start, end=end, backfill=True, replace=True)
        assert again.published == 1
    first, second = await drain(bus, SCENES, "t")
    assert (first.replace, second.replace) == (False, True)
    assert first.item_id == second.item_id and first.id != second.id


async def test_unreachable_api_backs_off_and_reports_unready(
    tmp_path: Path, rkh_item_path: Path
) -> None:
    settings = _settings(
        tmp_path,
        StacApiSource(name="down", url="http://127.0.0.1:9/", timeout_seconds=2),
        StaticSource(name="rkh", href=str(rkh_item_path)),
        poll_interval_seconds=0.2,
        backoff_seconds=0.1,
        backoff_max_seconds=0.4,
    )
    bus = InMemoryBus(service="ingest")
    stop = asyncio.Event()
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        ops = OpsServer(create_ops_app("ingest", watcher.readiness), "127.0.0.1", 0)
        await ops.start()
        task = asyncio.create_task(watcher.run(stop))
        try:
            async with httpx.AsyncClient(base_url=ops.url) as http:
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    metrics = (await http.get("/metrics")).text
                    if DOWN_3 in metrics:
                        break
                ready = await http.get("/readyz")
                live = await http.get("/livez")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await ops.stop()
    assert live.status_code == 200
    assert ready.status_code == 503 and "down" in ready.json()["detail"]
    assert DOWN_3 in metrics
    assert 'eostream_ingest_items_total{outcome="published",source="rkh"}' in metrics
    assert not task.exception()
    assert [e.item_id for e in await drain(bus, SCENES, "t")] == ["S2A_29RKH_20200219_0_L2A"]


def test_status_command_lists_sources(
    tmp_path: Path, rkh_item_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eostream.ingest.cli import app

    state = tmp_path / "state.sqlite"

    async def seed() -> None:
        store = SqliteStateStore(state)
        await store.open()
        await store.mark_seen("rkh", [SeenRecord("a", "v", "published")])
        await store.close()

    asyncio.run(seed())
    monkeypatch.setenv("INGEST_BUS", "kafka")  # the service's; status reads the state store only
    monkeypatch.delenv("INGEST_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("INGEST_SQLITE_PATH", str(state))
    monkeypatch.setenv(
        "INGEST_SOURCES",
        json.dumps(
            [
                {"kind": "static", "name": "rkh", "href": str(rkh_item_path)},
                {"kind": "static", "name": "idle", "href": str(rkh_item_path)},
            ]
        ),
    )
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("rkh") and " 1 " in line for line in lines)
    assert any(line.startswith("idle") and "never polled" in line for line in lines)


def test_a_backfill_that_ends_before_it_starts_is_refused() -> None:
    """It scanned the source, found nothing and exited 0."""
    from typer.testing import CliRunner

    from eostream.ingest.cli import app

    args = ["--source", "any", "--start", "2020-02-01T00:00:00Z", "--end", "2020-01-01T00:00:00Z"]
    result = CliRunner().invoke(app, ["backfill", *args])
    assert result.exit_code == 2 and "is before --start" in result.output, result.output


async def test_a_stac_geoparquet_table_is_a_catalogue(tmp_path: Path, data_dir: Path) -> None:
    """Planetary Computer's 100 Sentinel-2 items as stac-geoparquet rows: read as the JSON items
    they encode (the file was read as JSON and failed, retried at every poll), announced once,
    and each as the same event as its JSON copy (two of them are in two-sentinel-2-items.json)."""
    folder = data_dir / "sentinel2_stac/planetary_computer"
    table = StaticSource(name="pc-table", href=str(folder / "100-sentinel-2-items.parquet"))
    settings = _settings(tmp_path, table)
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        report = await watcher.poll(watcher.sources[0])
        assert (report.published, report.rejected) == (100, 0)
        again = await watcher.poll(watcher.sources[0])
        assert (again.published, again.duplicates) == (0, 100)
    events = {e.item_id: e for e in await drain(bus, SCENES, "t")}
    assert len(events) == 100
    assert {(e.tile, e.processing_level) for e in events.values()} == {("13TDE", "L2A")}
    json_copies = json.loads((folder / "two-sentinel-2-items.json").read_text())["features"]
    for item in json_copies:
        row = events[item["id"]]
        assert row.item_href == mapping.self_href(item)  # Planetary Computer's item URL
        same = mapping.to_scene(item, source="pc-table", href=row.item_href)
        fields = ("datetime", "bbox", "bands", "processing_baseline", "cloud_cover", "collection")
        assert [getattr(row, f) for f in fields] == [getattr(same, f) for f in fields]


async def test_a_file_that_is_no_table_says_so(tmp_path: Path) -> None:
    broken = tmp_path / "items.parquet"
    broken.write_text('{"type": "FeatureCollection", "features": []}')
    [source] = build_sources(_settings(tmp_path, StaticSource(name="broken", href=str(broken))))
    with pytest.raises(SourceUnavailable, match=f"broken: cannot read {broken}: .*Parquet"):
        async for _ in source.source.pages(start=None, end=None):
            pass


async def test_a_new_version_of_an_announced_item_replaces_its_map(
    tmp_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    """A product re-processed under the same id (Earth Search keeps ids; a newer baseline) was
    announced as an ordinary new scene, and inference skipped it as one its model had mapped:
    the map stayed the old processing's. It is announced as a replacement now, under its
    version's own event id (a crash before the mark repeats it, not a second map)."""
    first = copy.deepcopy(earth_search_v1[0])
    path = tmp_path / "item.json"
    path.write_text(json.dumps(first))
    settings = _settings(tmp_path, StaticSource(name="es", href=str(path)))
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        assert (await watcher.poll(watcher.sources[0])).published == 1
        reprocessed = copy.deepcopy(first)
        reprocessed["properties"]["updated"] = "2030-01-01T00:00:00Z"
        reprocessed["properties"]["s2:processing_baseline"] = "05.11"
        path.write_text(json.dumps(reprocessed))
        assert (await watcher.poll(watcher.sources[0])).published == 1
        assert (await watcher.poll(watcher.sources[0])).duplicates == 1
    old, new = await drain(bus, SCENES, "t")
    assert (old.item_id, old.replace) == (new.item_id, False)
    assert (new.replace, new.processing_baseline) == (True, "05.11")
    assert new.id == mapping.event_id("es", first["id"], "2030-01-01T00:00:00Z")
