"""The watcher against the real stack: stac-fastapi-pgstac, Kafka and PostgreSQL.

`eostream ingest run` runs as a subprocess; items are POSTed through the Transactions API while
it runs; it is SIGKILLed and SIGTERMed and restarted in the middle; every item must be announced
exactly once on the Kafka topic.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from eostream.ingest.service import from_settings, running, started
from eostream.ingest.settings import IngestSettings, StaticSource
from eostream.shared.events import SceneDiscovered
from eostream.shared.settings import KafkaSettings

from .conftest import JsonDict, eurosat_rewrites, malformed_items
from .stack_helpers import (
    clone,
    create_collection,
    delete_collection,
    post_items,
    read_dead_letters,
    read_topic,
    stack_env,
)

pytestmark = pytest.mark.stack
# `python -m eostream.ingest` is `eostream ingest` without the other services' plugins loaded
WATCHER = [sys.executable, "-m", "eostream.ingest", "run"]


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def collection(run_id: str, earth_search_collection: JsonDict) -> Iterator[str]:
    api = stack_env("EOSTREAM_STAC_API_URL")
    cid = f"eostream-test-{run_id}"
    create_collection(api, earth_search_collection, cid)
    yield cid
    delete_collection(api, cid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WatcherProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log_path = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(WATCHER, env=self.env, stdout=log, stderr=log)

    def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def polls(self) -> int:
        """Completed polls so far (the watcher logs one line per poll)."""
        return self.log().count(", duplicates ")


async def _wait_for(bootstrap: str, topic: str, ids: set[str], proc: WatcherProcess) -> None:
    for _ in range(240):
        seen = {
            e.item_id for e in await read_topic(bootstrap, topic) if isinstance(e, SceneDiscovered)
        }
        if ids <= seen:
            return
        assert proc.proc is None or proc.proc.poll() is None, proc.log()[-3000:]
        await asyncio.sleep(0.5)
    pytest.fail(f"not announced: {sorted(ids - seen)[:5]}...\n{proc.log()[-3000:]}")


async def test_items_inserted_while_running_are_announced_once_across_restarts(
    tmp_path: Path, run_id: str, collection: str, earth_search_v1: list[JsonDict]
) -> None:
    api = stack_env("EOSTREAM_STAC_API_URL")
    bootstrap = stack_env("EOSTREAM_KAFKA_BOOTSTRAP")
    dsn = stack_env("EOSTREAM_PG_DSN")
    topic, dlq = f"eostream.test.scenes.{run_id}", f"eostream.test.deadletter.{run_id}"
    port = _free_port()
    base = datetime(2024, 5, 1, tzinfo=UTC)
    counter = iter(range(10_000))

    def batch(n: int) -> list[JsonDict]:
        out = []
        for _ in range(n):
            k = next(counter)
            template = earth_search_v1[k % len(earth_search_v1)]
            out.append(
                clone(
                    template,
                    collection=collection,
                    new_id=f"{template['id']}-{run_id}-{k}",
                    when=base + timedelta(minutes=k),
                )
            )
        return out

    source = {
        "kind": "stac_api",
        "name": f"es-{run_id}",
        "url": api,
        "page_size": 4,
        "overlap_seconds": 3600,
        "filter": {"collections": [collection]},
    }
    env = {
        **os.environ,
        "INGEST_BUS": "kafka",
        "INGEST_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "INGEST_KAFKA__DEAD_LETTER_TOPIC": dlq,
        "INGEST_TOPIC": topic,
        "INGEST_STATE": "postgres",
        "INGEST_PG_DSN": dsn,
        "INGEST_PG_SCHEMA": f"ingest_test_{run_id}",  # its own leader lock (ADR 0006)
        "INGEST_SOURCES": json.dumps([source]),
        "INGEST_POLL_INTERVAL_SECONDS": "0.5",
        "INGEST_HTTP_PORT": str(port),
        "INGEST_LOG_LEVEL": "INFO",
    }
    watcher = WatcherProcess(env, tmp_path / "watcher.log")
    expected: set[str] = set()

    def insert(n: int) -> set[str]:
        items = batch(n)
        post_items(api, collection, items)
        expected.update(i["id"] for i in items)
        return {i["id"] for i in items}

    insert(6)
    watcher.start()
    await _wait_for(bootstrap, topic, expected, watcher)  # the watcher is up and polling
    for _ in range(3):  # items inserted while it runs, one round after the other
        await _wait_for(bootstrap, topic, insert(3), watcher)
    # two malformed items the API accepts but the watcher must dead-letter
    broken = malformed_items(earth_search_v1[0])
    bad = [
        clone(
            broken[k],
            collection=collection,
            # not f"{k}-{run_id}": "unknown-level-2a..." names L2A to processing_level
            new_id=f"{k}-run-{run_id}",
            when=base + timedelta(minutes=next(counter)),
        )
        for k in ("no-band-assets", "unknown-level")
    ]
    post_items(api, collection, bad)
    await _wait_for(bootstrap, topic, insert(2), watcher)
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text

    # crash between polls (after the one that published them has completed), insert while
    # down, restart
    polls = watcher.polls()
    for _ in range(200):
        if watcher.polls() > polls:
            break
        await asyncio.sleep(0.1)
    assert watcher.stop(signal.SIGKILL) == -signal.SIGKILL
    insert(4)
    watcher.start()
    await _wait_for(bootstrap, topic, insert(3), watcher)
    await _wait_for(bootstrap, topic, expected, watcher)

    # crash in the middle of a poll: kill as soon as the first of a big batch is on the topic
    in_flight = insert(40)
    for _ in range(200):
        on_topic = {
            e.item_id for e in await read_topic(bootstrap, topic) if isinstance(e, SceneDiscovered)
        }
        if on_topic & in_flight:
            break
        await asyncio.sleep(0.1)
    assert watcher.stop(signal.SIGKILL) == -signal.SIGKILL
    partly = len(on_topic & in_flight)
    watcher.start()
    await _wait_for(bootstrap, topic, expected, watcher)

    # graceful stop (finishes the poll in flight), restart, more items
    assert watcher.stop(signal.SIGTERM) == 0
    assert "stopped" in watcher.log()
    watcher.start()
    await _wait_for(bootstrap, topic, insert(5), watcher)
    await asyncio.sleep(2)  # more polls over the overlap window: still nothing twice
    assert watcher.stop(signal.SIGTERM) == 0

    events = [e for e in await read_topic(bootstrap, topic) if isinstance(e, SceneDiscovered)]
    per_item = Counter(e.item_id for e in events)
    ids_per_item = {i: {e.id for e in events if e.item_id == i} for i in per_item}
    assert set(per_item) == expected and len(expected) == 6 + 9 + 2 + 7 + 40 + 5
    # one idempotency key per item, always
    assert [i for i, ids in ids_per_item.items() if len(ids) != 1] == []
    # exactly one record per item, except that a SIGKILL between the broker's ack and the
    # seen-set write may repeat (same event id) items of the poll it interrupted
    repeated = {i for i, n in per_item.items() if n != 1}
    assert repeated <= in_flight, sorted(repeated - in_flight)
    assert 0 < partly  # the kill did land in the middle of that poll
    print(f"SIGKILL mid-poll: {partly} of 40 on the topic at the kill, {len(repeated)} repeated")  # noqa: T201
    assert all(e.item_href.startswith(f"{api}/collections/{collection}/items/") for e in events)

    letters = await read_dead_letters(bootstrap, dlq)
    reasons = {d.original_key: d.reason for d in letters}
    assert set(reasons) == {i["id"] for i in bad}
    assert "missing assets" in reasons[bad[0]["id"]]
    assert "unknown processing level" in reasons[bad[1]["id"]]


async def test_static_catalogues_and_malformed_items_on_kafka(
    tmp_path: Path,
    run_id: str,
    data_dir: Path,
    eurosat_catalog: Path,
    rkh_item_path: Path,
    earth_search_v1: list[JsonDict],
) -> None:
    bootstrap = stack_env("EOSTREAM_KAFKA_BOOTSTRAP")
    dsn = stack_env("EOSTREAM_PG_DSN")
    topic, dlq = f"eostream.test.scenes.{run_id}", f"eostream.test.deadletter.{run_id}"
    broken = malformed_items(earth_search_v1[1])
    mixed = tmp_path / "mixed.json"
    features = [earth_search_v1[0], *broken.values(), earth_search_v1[2]]
    mixed.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    settings = IngestSettings(
        bus="kafka",
        kafka=KafkaSettings(bootstrap_servers=bootstrap, dead_letter_topic=dlq),
        topic=topic,
        state="postgres",
        pg_dsn=dsn,
        sources=(
            StaticSource(
                name=f"eurosat-{run_id}",
                href=str(eurosat_catalog),
                href_rewrites=eurosat_rewrites(data_dir),
                assume_level="L1C",
            ),
            StaticSource(name=f"rkh-{run_id}", href=str(rkh_item_path)),
            StaticSource(name=f"mixed-{run_id}", href=str(mixed)),
        ),
    )
    adapters = from_settings(settings)
    async with started(adapters.bus), running(settings, adapters) as watcher:
        reports = [await watcher.poll(w) for w in watcher.sources]
        again = [await watcher.poll(w) for w in watcher.sources]
    assert [(r.published, r.rejected) for r in reports] == [(100, 0), (1, 0), (2, len(broken))]
    assert sum(r.published + r.rejected for r in again) == 0
    events = [e for e in await read_topic(bootstrap, topic) if isinstance(e, SceneDiscovered)]
    assert len(events) == 103 and len({e.item_id for e in events}) == 103
    letters = await read_dead_letters(bootstrap, dlq)
    assert {d.original_key for d in letters} == {i["id"] for i in broken.values()}
    assert all(d.reason and d.error_type == "ItemRejected" for d in letters)


async def test_static_catalogue_on_s3(
    tmp_path: Path, run_id: str, rkh_item_path: Path, earth_search_v1: list[JsonDict]
) -> None:
    from eostream.shared.settings import S3Settings
    from eostream.shared.storage.s3 import S3ObjectStore

    s3 = S3Settings(
        endpoint=stack_env("EOSTREAM_S3_ENDPOINT"),
        access_key=stack_env("EOSTREAM_S3_ACCESS_KEY"),
        secret_key=stack_env("EOSTREAM_S3_SECRET_KEY"),
    )
    store = S3ObjectStore(s3, "eostream")
    store.check()
    prefix = f"tests/ingest-{run_id}"
    items = [json.loads(rkh_item_path.read_text()), *earth_search_v1[:3]]
    links = []
    for n, item in enumerate(items):
        store.put_bytes(f"{prefix}/items/item-{n}.json", json.dumps(item).encode())
        links.append({"rel": "item", "href": f"./items/item-{n}.json"})
    catalog = {
        "type": "Catalog",
        "id": "s3",
        "stac_version": "1.0.0",
        "description": "t",
        "links": links,
    }
    store.put_bytes(f"{prefix}/catalog.json", json.dumps(catalog).encode())
    settings = IngestSettings(
        bus="memory",
        s3=s3,
        sqlite_path=tmp_path / "state.sqlite",
        sources=(StaticSource(name="s3", href=f"s3://eostream/{prefix}/catalog.json"),),
    )
    from eostream.shared.bus.memory import InMemoryBus

    from .helpers import drain

    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        report = await watcher.poll(watcher.sources[0])
    assert (report.published, report.rejected) == (4, 0)
    events = await drain(bus, settings.topic, "t")
    hrefs = {e.item_id: e.item_href for e in events}
    assert hrefs[items[0]["id"]] == f"s3://eostream/{prefix}/items/item-0.json"
