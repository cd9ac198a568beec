"""The state store protocol on sqlite (and on PostgreSQL with the stack)."""

from __future__ import annotations

import asyncio
import os
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
