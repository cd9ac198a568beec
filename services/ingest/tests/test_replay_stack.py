"""Replay and leader election on the real stack: `eostream ingest run` processes, Kafka,
PostgreSQL, the STAC API, and `eostream dlq replay` run as a user runs it."""

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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eostream.shared import topics
from eostream.shared.events import SceneDiscovered

from .conftest import JsonDict
from .helpers import write_catalogue
from .stack_helpers import (
    clone,
    create_collection,
    delete_collection,
    post_items,
    read_dead_letters,
    read_topic,
    stack_env,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]
INGEST = [sys.executable, "-m", "eostream.ingest", "run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ingest:
    """One `eostream ingest run` process with its ops port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.env = {**env, "INGEST_HTTP_PORT": str(self.port)}
        self.log_path = log
        handle = log.open("ab")
        self.proc = subprocess.Popen(INGEST, env=self.env, stdout=handle, stderr=handle)

    def ready(self) -> str:
        """The /readyz detail ('' while it does not answer yet)."""
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
        except httpx.HTTPError:
            return ""
        return str(response.json().get("detail", ""))

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def polls(self, source: str) -> float:
        """Polls of ``source`` this process finished (its /metrics:
        ``eostream_ingest_poll_duration_seconds_count``; 0 while it does not answer yet)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return 0.0
        return next(
            (
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "eostream_ingest_poll_duration_seconds_count"
                and sample.labels.get("source") == source
            ),
            0.0,
        )

    async def two_more_polls(self, source: str) -> None:
        """Until ``source`` has been polled twice more: at least one whole poll that began after
        this call (a negative check then rests on the polls that ran, not on a sleep)."""
        done = self.polls(source)
        await until(lambda: self.polls(source) >= done + 2, f"two more polls of {source}", self)


async def until(check: Callable[[], bool], what: str, *procs: Ingest, seconds: float = 90) -> None:
    for _ in range(int(seconds / 0.25)):
        if check():
            return
        for p in procs:
            assert p.proc.poll() is None, p.log()
        await asyncio.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(p.log() for p in procs))


def eostream(*args: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("eostream")
    return subprocess.run(
        [str(command), *args],
        env={**os.environ, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def collection(run_id: str, earth_search_collection: JsonDict) -> Iterator[str]:
    api = stack_env("EOSTREAM_STAC_API_URL")
    cid = f"eostream-replay-{run_id}"
    create_collection(api, earth_search_collection, cid)
    yield cid
    delete_collection(api, cid)


def kafka_env(prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "INGEST_BUS": "kafka",
        "INGEST_KAFKA__BOOTSTRAP_SERVERS": stack_env("EOSTREAM_KAFKA_BOOTSTRAP"),
        "INGEST_KAFKA__TOPIC_PREFIX": prefix,
        "INGEST_POLL_INTERVAL_SECONDS": "0.3",
        "INGEST_LEADER_RETRY_SECONDS": "0.5",
        "INGEST_LOG_LEVEL": "INFO",
    }


async def scenes(prefix: str) -> list[SceneDiscovered]:
    bootstrap = stack_env("EOSTREAM_KAFKA_BOOTSTRAP")
    found = await read_topic(bootstrap, prefix + topics.SCENES_DISCOVERED)
    return [e for e in found if isinstance(e, SceneDiscovered)]


async def test_an_item_fixed_at_the_stac_api_and_replayed_is_announced_once(
    tmp_path: Path, run_id: str, collection: str, earth_search_v1: list[JsonDict]
) -> None:
    api = stack_env("EOSTREAM_STAC_API_URL")
    bootstrap = stack_env("EOSTREAM_KAFKA_BOOTSTRAP")
    prefix = f"replay{run_id}."
    when = datetime(2024, 5, 1, 10, tzinfo=UTC)
    good = clone(earth_search_v1[0], collection=collection, new_id=f"good-{run_id}", when=when)
    fixed = clone(earth_search_v1[1], collection=collection, new_id=f"fix-{run_id}", when=when)
    bad = {**fixed, "assets": {}}  # same id, same `updated`: only a replay looks at it again
    post_items(api, collection, [good, bad])
    source = {
        "kind": "stac_api",
        "name": f"es-{run_id}",
        "url": api,
        "overlap_seconds": 3600,
        "filter": {"collections": [collection]},
    }
    env = {
        **kafka_env(prefix),
        "INGEST_SOURCES": json.dumps([source]),
        "INGEST_SQLITE_PATH": str(tmp_path / "state.sqlite"),
    }
    ingest = Ingest(env, tmp_path / "ingest.log")
    try:
        dlq = prefix + topics.DEAD_LETTER
        dead: list[object] = []

        async def rejected() -> bool:
            dead[:] = await read_dead_letters(bootstrap, dlq)
            return len(dead) == 1

        for _ in range(240):
            if await rejected():
                break
            assert ingest.proc.poll() is None, ingest.log()
            await asyncio.sleep(0.25)
        assert len(dead) == 1, ingest.log()
        assert [e.item_id for e in await scenes(prefix)] == [good["id"]]

        # the user fixes the item at the API, then replays its dead letter
        response = httpx.put(
            f"{api}/collections/{collection}/items/{fixed['id']}", json=fixed, timeout=30
        )
        assert response.status_code in (200, 201), response.text[:500]
        await ingest.two_more_polls(f"es-{run_id}")  # none looks at the rejected version again
        assert len(await scenes(prefix)) == 1

        listed = eostream("dlq", "list", "--topic", f"stac:es-{run_id}", "--topic-prefix", prefix)
        assert listed.returncode == 0, listed.stderr
        assert fixed["id"] in listed.stdout and "missing assets" in listed.stdout
        replay = eostream("dlq", "replay", "--topic", f"stac:es-{run_id}", "--topic-prefix", prefix)
        assert replay.returncode == 0, replay.stderr
        assert "1 replayed" in replay.stdout, replay.stdout

        for _ in range(240):
            if len(await scenes(prefix)) >= 2:
                break
            assert ingest.proc.poll() is None, ingest.log()
            await asyncio.sleep(0.25)
        again = eostream("dlq", "replay", "--topic", f"stac:es-{run_id}", "--topic-prefix", prefix)
        assert again.returncode == 0, again.stderr
        assert "1 already replayed" in again.stdout, again.stdout
        # no second replay request went out, and more polls do not announce the item again
        requests = await read_topic(bootstrap, prefix + topics.INGEST_REPLAY)
        assert [type(r).__name__ for r in requests] == ["ItemReplayRequested"]
        await ingest.two_more_polls(f"es-{run_id}")
        assert ingest.stop(signal.SIGTERM) == 0
    finally:
        if ingest.proc.poll() is None:
            ingest.stop(signal.SIGKILL)
    announced = Counter(e.item_id for e in await scenes(prefix))
    assert announced == {good["id"]: 1, fixed["id"]: 1}, ingest.log()
    assert len(await read_dead_letters(bootstrap, prefix + topics.DEAD_LETTER)) == 1


async def test_two_ingest_processes_on_one_postgres_state_announce_once_across_a_crash(
    tmp_path: Path, run_id: str, earth_search_v1: list[JsonDict]
) -> None:
    prefix = f"leader{run_id}."
    items = earth_search_v1[:6]
    catalog = write_catalogue(tmp_path / "cat", items[:4])
    env = {
        **kafka_env(prefix),
        "INGEST_STATE": "postgres",
        "INGEST_PG_DSN": stack_env("EOSTREAM_PG_DSN"),
        "INGEST_PG_SCHEMA": f"ingest_leader_{run_id}",
        "INGEST_SOURCES": json.dumps([{"kind": "static", "name": "cat", "href": str(catalog)}]),
    }
    a = Ingest(env, tmp_path / "a.log")
    b: Ingest | None = None
    try:
        await until(lambda: a.ready().startswith("leader:"), "a to lead", a)
        b = Ingest(env, tmp_path / "b.log")
        await until(lambda: b is not None and b.ready().startswith("standby:"), "b", a, b)
        n: list[int] = [0]

        async def count() -> int:
            n[0] = len(await scenes(prefix))
            return n[0]

        for _ in range(200):
            if await count() >= 4:
                break
            await asyncio.sleep(0.25)
        assert n[0] == 4, a.log()

        assert a.stop(signal.SIGKILL) == -signal.SIGKILL  # the active one dies
        write_catalogue(tmp_path / "cat", items)
        await until(lambda: b is not None and b.ready().startswith("leader:"), "b to lead", b)
        for _ in range(200):
            if await count() >= 6:
                break
            await asyncio.sleep(0.25)
        await b.two_more_polls("cat")  # the new leader does not announce its catalogue again
        assert b.stop(signal.SIGTERM) == 0
    finally:
        for p in (a, b):
            if p is not None and p.proc.poll() is None:
                p.stop(signal.SIGKILL)
    announced = Counter(e.item_id for e in await scenes(prefix))
    assert announced == {i["id"]: 1 for i in items}, (a.log(), b.log() if b else "")


async def test_the_postgres_leader_lock_is_held_once_and_freed_with_its_session(
    run_id: str,
) -> None:
    import psycopg

    from eostream.ingest.leader import PostgresLeaderLock

    dsn = stack_env("EOSTREAM_PG_DSN")
    schema = f"ingest_lock_{run_id}"
    a = PostgresLeaderLock(dsn, database="results", schema=schema)
    b = PostgresLeaderLock(dsn, database="results", schema=schema)
    other = PostgresLeaderLock(dsn, database="results", schema=schema + "_other")
    try:
        assert await a.try_acquire()
        assert not await b.try_acquire()
        assert await other.try_acquire()  # another deployment's schema: its own lock
        assert await a.held() and not await b.held()
        # the leader's session dies (a crash, a network cut): the server frees the lock
        async with await psycopg.AsyncConnection.connect(
            dsn, dbname="results", autocommit=True
        ) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'eostream-ingest-leader' AND pid IN "
                "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s::bigint "
                "& x'ffffffff'::bigint)",
                (a.key,),
            )
        assert not await a.held()
        assert await b.try_acquire()
        assert not await a.try_acquire()
        await b.release()
        assert await a.try_acquire()
    finally:
        for lock in (a, b, other):
            await lock.release()
