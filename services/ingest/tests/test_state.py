"""The state store protocol on sqlite (and on PostgreSQL with the stack)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eostream.ingest.state import SeenRecord, SqliteStateStore, StateStore
from eostream.ingest.state_pg import PostgresStateStore


async def _exercise(store: StateStore, source: str) -> None:
    t0 = datetime(2024, 4, 1, tzinfo=UTC)
    assert await store.watermark(source) is None
    await store.set_watermark(source, t0)
    await store.set_watermark(source, t0 - timedelta(days=1))  # never moves back
    assert await store.watermark(source) == t0
    keys = [("a", "v1"), ("b", "v1")]
    assert await store.unseen(source, keys) == set(keys)
    await store.mark_seen(source, [SeenRecord("a", "v1", "published", "id-a", t0)])
    await store.mark_seen(source, [SeenRecord("a", "v1", "published", "id-a", t0)])  # idempotent
    assert await store.unseen(source, [*keys, ("a", "v2")]) == {("b", "v1"), ("a", "v2")}
    assert await store.unseen("another-source", keys) == set(keys)
    rows = {r.source: r for r in await store.summary()}
    assert rows[source].published == 1 and rows[source].watermark == t0
    # a replay forgets the rejections of an item (every version), never what was published
    await store.mark_seen(
        source, [SeenRecord("b", "v1", "rejected"), SeenRecord("b", "v2", "rejected")]
    )
    assert await store.forget_rejection(source, "a") == 0
    assert await store.forget_rejection(source, "b") == 2
    assert await store.unseen(source, [("a", "v1"), ("b", "v1")]) == {("b", "v1")}
    # which items had a version announced (a new version of those replaces their maps)
    await store.mark_seen(source, [SeenRecord("c", "v1", "rejected")])
    assert await store.published(source, ["a", "b", "c", "d"]) == {"a"}
    assert await store.published("another-source", ["a"]) == set()
    assert await store.published(source, []) == set()


async def test_sqlite_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = SqliteStateStore(path)
    await store.open()
    await _exercise(store, "s")
    await store.close()
    again = SqliteStateStore(path)
    await again.open()
    try:
        assert await again.unseen("s", [("a", "v1")]) == set()
        assert await again.watermark("s") == datetime(2024, 4, 1, tzinfo=UTC)
    finally:
        await again.close()


async def test_sqlite_state_recovers_from_a_failed_write(tmp_path: Path) -> None:
    """A write that fails ("database is locked": another writer of the file held it past the
    busy timeout) is rolled back: the next writes work and survive a restart."""
    path = tmp_path / "state.sqlite"
    store = SqliteStateStore(path, timeout=0.1)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)  # e.g. `eostream ingest` on the same file
    t0 = datetime(2024, 4, 1, tzinfo=UTC)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.mark_seen("s", [SeenRecord("a", "v1", "published")])
        other.execute("COMMIT")
        await store.mark_seen("s", [SeenRecord("b", "v1", "published")])
        await store.set_watermark("s", t0)
        assert await store.forget_rejection("s", "b") == 0
    finally:
        other.close()
        await store.close()
    again = SqliteStateStore(path)
    await again.open()
    try:
        assert await again.watermark("s") == t0
        assert await again.unseen("s", [("a", "v1"), ("b", "v1")]) == {("a", "v1")}
    finally:
        await again.close()


async def test_sqlite_state_cancelled_call_keeps_the_connection_until_its_thread_is_done(
    tmp_path: Path,
) -> None:
    """The label watcher is cancelled on resignation while the replay consumer still uses the
    store: its thread goes on with the connection, so the next call waits for it to finish
    rather than run beside it on the same connection."""
    path = tmp_path / "state.sqlite"
    store = SqliteStateStore(path, timeout=10)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the first write's thread waits for the file
        first = asyncio.create_task(
            store.mark_seen("labels:x", [SeenRecord("x", "d1", "published")])
        )
        await asyncio.sleep(0.3)
        first.cancel()
        second = asyncio.create_task(store.mark_seen("s", [SeenRecord("item", "v", "published")]))
        await asyncio.sleep(0.3)
        assert not second.done()  # waits: the first thread still has the connection
        other.execute("COMMIT")
        await second
        with pytest.raises(asyncio.CancelledError):
            await first
        # the thread could not be stopped: its write went through, and nothing is left open
        assert await store.unseen("s", [("item", "v")]) == set()
        assert await store.unseen("labels:x", [("x", "d1")]) == set()
    finally:
        other.close()
        await store.close()


async def test_sqlite_state_close_waits_for_a_cancelled_call(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = SqliteStateStore(path, timeout=10)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        call = asyncio.create_task(store.mark_seen("s", [SeenRecord("a", "v1", "published")]))
        await asyncio.sleep(0.3)
        call.cancel()
        closing = asyncio.create_task(store.close())
        await asyncio.sleep(0.3)
        assert not closing.done()
        other.execute("COMMIT")
        await closing
        with contextlib.suppress(asyncio.CancelledError):
            await call
    finally:
        other.close()
    again = SqliteStateStore(path)
    await again.open()
    try:
        assert await again.unseen("s", [("a", "v1")]) == set()
    finally:
        await again.close()


@pytest.mark.stack
async def test_postgres_state() -> None:
    dsn = os.environ.get("EOSTREAM_PG_DSN")
    if not dsn:
        pytest.fail("EOSTREAM_PG_DSN is not set (deploy/local/stack env)")
    store = PostgresStateStore(dsn, database="results", schema="ingest_test")
    await store.open()
    try:
        await _exercise(store, f"test-{uuid.uuid4().hex[:8]}")
    finally:
        await store.close()


@pytest.mark.stack
async def test_postgres_state_keeps_one_operation_on_its_connection_at_a_time() -> None:
    """The scene and label watchers share the store's one connection: a statement of one sent
    while the other's transaction block (mark_seen) is open would run in that transaction and
    roll back with it. Each operation waits for the one before it."""
    dsn = os.environ.get("EOSTREAM_PG_DSN")
    if not dsn:
        pytest.fail("EOSTREAM_PG_DSN is not set (deploy/local/stack env)")
    store = PostgresStateStore(dsn, database="results", schema="ingest_test")
    await store.open()
    source, other = (f"test-{uuid.uuid4().hex[:8]}" for _ in range(2))
    t0 = datetime(2024, 4, 1, tzinfo=UTC)
    try:
        bad = [SeenRecord(f"i{n}", "v1", "published") for n in range(200)]
        bad.append(SeenRecord("x", "v1", None))  # type: ignore[arg-type]  # NOT NULL: rolls back
        results = await asyncio.gather(
            store.mark_seen(source, bad),
            store.set_watermark(other, t0),
            return_exceptions=True,
        )
        assert isinstance(results[0], Exception) and results[1] is None
        assert await store.watermark(other) == t0  # not rolled back with the failed batch
        assert await store.unseen(source, [("i0", "v1")]) == {("i0", "v1")}
        async with store._lock:  # an operation in progress: the next one waits for it
            waiting = asyncio.create_task(store.set_watermark(other, t0 + timedelta(days=1)))
            await asyncio.sleep(0.2)
            assert not waiting.done()
        await waiting
        assert await store.watermark(other) == t0 + timedelta(days=1)
    finally:
        await store.close()
