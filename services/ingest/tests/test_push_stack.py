"""Push and NOTIFY against the real stack: stac-fastapi-pgstac (its PostgreSQL), Kafka and the
ingest state in PostgreSQL. The runner runs in this process, polling once an hour: its first
poll happens at start, before the item is inserted, so an announcement can only come from the
push or the NOTIFY (counted polls prove no second poll ran).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cloudevents.v1.conversion import to_binary
from cloudevents.v1.http import CloudEvent
from prometheus_client import REGISTRY
from pydantic import SecretStr

from eostream.ingest.api import PUSH_PATH
from eostream.ingest.notify import drop_trigger
from eostream.ingest.service import IngestRunner, build_ingest, from_settings, http_servers
from eostream.ingest.settings import IngestSettings, NotifySettings, PushSettings, StacApiSource
from eostream.shared.events import SceneDiscovered
from eostream.shared.settings import KafkaSettings
from eostream.shared.webhooks import signed_headers

from .conftest import JsonDict
from .stack_helpers import clone, create_collection, delete_collection, post_items, read_topic
from .stack_helpers import stack_env as env

pytestmark = pytest.mark.stack
SECRET = "whsec_" + "c2VjcmV0LW9mLXRoZS1wdXNoLXN0YWNrLXRlc3Rz"
HOUR = 3600.0


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def collection(run_id: str, earth_search_collection: JsonDict) -> Iterator[str]:
    api = env("EOSTREAM_STAC_API_URL")
    cid = f"eostream-push-{run_id}"
    create_collection(api, earth_search_collection, cid)
    yield cid
    delete_collection(api, cid)


def settings_for(run_id: str, collection: str, **kw: Any) -> IngestSettings:
    return IngestSettings(
        bus="kafka",
        kafka=KafkaSettings(
            bootstrap_servers=env("EOSTREAM_KAFKA_BOOTSTRAP"),
            dead_letter_topic=f"eostream.test.deadletter.{run_id}",
        ),
        topic=f"eostream.test.scenes.{run_id}",
        state="postgres",
        pg_dsn=SecretStr(env("EOSTREAM_PG_DSN")),
        pg_schema=f"ingest_push_{run_id}",
        poll_interval_seconds=HOUR,
        sources=(
            StacApiSource(
                name=f"api-{run_id}",
                url=env("EOSTREAM_STAC_API_URL"),
                filter={"collections": [collection]},
                overlap_seconds=HOUR,
            ),
        ),
        **kw,
    )


def polls(source: str) -> float:
    value = REGISTRY.get_sample_value(
        "eostream_ingest_poll_duration_seconds_count", {"source": source}
    )
    return value or 0.0


@asynccontextmanager
async def leading(settings: IngestSettings) -> AsyncIterator[tuple[IngestRunner, str]]:
    """The runner leading (first poll done; listening when NOTIFY is on) and its HTTP server."""
    adapters = from_settings(settings)
    await adapters.bus.start()
    await adapters.state.open()
    stop = asyncio.Event()
    runner = build_ingest(
        settings,
        bus=adapters.bus,
        state=adapters.state,
        lock=adapters.lock,
        sources=adapters.sources,
    )
    servers = http_servers(settings, runner)
    for server in servers:
        await server.start()
    task = asyncio.create_task(runner.run(stop))
    try:
        for _ in range(1200):
            ok, _detail = runner.readiness()
            if ok and runner.arrivals_now() is not None:
                break
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"ingest not ready: {runner.readiness()}")
        yield runner, servers[0].url
    finally:
        stop.set()
        await task
        for server in servers:
            await server.stop()
        await adapters.state.close()
        await adapters.bus.close()


async def announced(settings: IngestSettings, item_id: str, at_least: int = 1) -> list[Any]:
    bootstrap = env("EOSTREAM_KAFKA_BOOTSTRAP")
    for _ in range(120):
        events = [
            e
            for e in await read_topic(bootstrap, settings.topic)
            if isinstance(e, SceneDiscovered) and e.item_id == item_id
        ]
        if len(events) >= at_least:
            return events
        await asyncio.sleep(0.25)
    return []


async def terminate_listener(dsn: str, channel: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = %s AND pid <> pg_backend_pid()",
            (f'LISTEN "{channel}"',),
        )
        assert [row[0] for row in await cursor.fetchall()] == [True]


def new_item(template: JsonDict, collection: str, run_id: str, name: str) -> JsonDict:
    return clone(
        template, collection=collection, new_id=f"S2B_{name}_{run_id}", when=datetime.now(UTC)
    )


async def test_a_pushed_then_polled_scene_is_announced_once_on_the_stack(
    run_id: str, collection: str, earth_search_v1: list[JsonDict]
) -> None:
    push = PushSettings(enabled=True, secret=SecretStr(SECRET))
    settings = settings_for(run_id, collection, push=push)
    api = env("EOSTREAM_STAC_API_URL")
    async with leading(settings) as (runner, url):
        source = runner.watcher.sources[0]
        assert polls(source.config.name) == 1
        item = new_item(earth_search_v1[0], collection, run_id, "PUSHED")
        post_items(api, collection, [item])
        ce = CloudEvent(
            {"type": "org.eoepca.resource-registration.resource.added", "source": "/test"},
            {"id": item["id"], "collection": collection},
        )
        headers, body = to_binary(ce)
        forged = {**headers, **signed_headers("not-the-secret-at-all", "f1", 0, body)}
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            refused = await client.post(PUSH_PATH, content=body, headers=forged)
            assert refused.status_code == 401
            stamp = int(datetime.now(UTC).timestamp())
            headers = {**headers, **signed_headers(SECRET, "w1", stamp, body)}
            answer = await client.post(PUSH_PATH, content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "announced"
        # the safety net runs: it finds the item, already announced
        report = await runner.watcher.poll(source)
        assert (report.published, report.duplicates) == (0, 1)
        events = await announced(settings, item["id"])
    assert len(events) == 1
    assert events[0].collection == collection


async def test_notify_announces_an_item_inserted_into_pgstac_once_without_a_poll(
    run_id: str, collection: str, earth_search_v1: list[JsonDict]
) -> None:
    channel = f"eostream_test_{run_id}"
    notify = NotifySettings(enabled=True, channel=channel)
    settings = settings_for(run_id, collection, notify=notify)
    dsn = settings.notify_dsn()
    assert dsn is not None
    api = env("EOSTREAM_STAC_API_URL")
    try:
        async with leading(settings) as (runner, _url):
            name = runner.watcher.sources[0].config.name
            assert runner.listener is not None and runner.listener.listening
            assert polls(name) == 1
            item = new_item(earth_search_v1[1], collection, run_id, "NOTIFIED")
            post_items(api, collection, [item])  # the STAC API's transaction: pgstac.items
            events = await announced(settings, item["id"])
            assert len(events) == 1, "not announced by NOTIFY"
            # the listener's connection dies: it reconnects and LISTENs again
            await terminate_listener(dsn, channel)
            for _ in range(400):
                if runner.listener.connections >= 2 and runner.listener.listening:
                    break
                await asyncio.sleep(0.05)
            assert runner.listener.connections >= 2, runner.listener.readiness()
            later = new_item(earth_search_v1[2], collection, run_id, "AFTER_RECONNECT")
            post_items(api, collection, [later])
            assert len(await announced(settings, later["id"])) == 1
            # the provider updates it (a new `updated`): the UPDATE notifies, a new version
            item["properties"]["updated"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            response = httpx.put(
                f"{api}/collections/{collection}/items/{item['id']}", json=item, timeout=60
            )
            assert response.status_code in (200, 201), response.text
            events = await announced(settings, item["id"], at_least=2)
            assert polls(name) == 1, "a poll ran: the test proves nothing"
    finally:
        await drop_trigger(dsn, channel)
    # the touched item is a new version (content digest): announced once more, by NOTIFY
    assert len(events) == 2
    assert len({e.id for e in events}) == 2
