"""The watcher's memory: a watermark and a seen-set per source. One protocol, two adapters
(sqlite for the embedded mode, here; PostgreSQL for the full stack, in ``state_pg``).

The seen-set is keyed by (source, item id, item version): an item whose ``updated`` changes is a
new version and is announced again. Rows are written only after the bus acknowledged the
publish, so a crash can repeat an announcement but never lose one (see README, "Delivery").
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol, TypeVar

T = TypeVar("T")

Outcome = Literal["published", "rejected", "filtered"]


@dataclass(frozen=True)
class SeenRecord:
    item_id: str
    version: str
    outcome: Outcome
    event_id: str | None = None
    item_datetime: datetime | None = None


@dataclass(frozen=True)
class SourceSummary:
    source: str
    watermark: datetime | None
    published: int
    rejected: int
    filtered: int
    last_seen_at: datetime | None


class StateStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def watermark(self, source: str) -> datetime | None: ...

    async def set_watermark(self, source: str, value: datetime) -> None:
        """Move the watermark forward (never back)."""

    async def unseen(self, source: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (item id, version) pairs among ``keys`` that this source has not recorded."""

    async def mark_seen(self, source: str, records: Sequence[SeenRecord]) -> None: ...

    async def published(self, source: str, item_ids: Sequence[str]) -> set[str]:
        """The ids among ``item_ids`` this source has announced a version of."""

    async def forget_rejection(self, source: str, item_id: str) -> int:
        """Drop the "rejected" rows of an item (every version), so that it is looked at again
        (``eostream dlq replay``); published rows stay. Returns the rows dropped."""

    async def summary(self) -> list[SourceSummary]: ...


SCHEMA = (
    """CREATE TABLE IF NOT EXISTS watermarks (
        source TEXT PRIMARY KEY, watermark TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS seen (
        source TEXT NOT NULL, item_id TEXT NOT NULL, version TEXT NOT NULL,
        outcome TEXT NOT NULL, event_id TEXT, item_datetime TEXT, seen_at TEXT NOT NULL,
        PRIMARY KEY (source, item_id, version))""",
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class SqliteStateStore:
    """sqlite3 in a worker thread; one connection, serialised by a lock.

    ``timeout``: how long a write waits for another writer of the file (an ``eostream ingest``
    command on the same state) before it fails with "database is locked".
    """

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteStateStore.open() must be awaited first")
        return self._conn

    async def _in_thread(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the connection in a worker thread, one at a time.

        A thread cannot be stopped: when the caller is cancelled (the label watcher, on
        resignation) the lock stays held until the thread is done with the connection, then the
        cancellation goes on. Released at once, the next operation would run on the same
        connection beside it ("cannot start a transaction within a transaction").
        """
        async with self._lock:
            running = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                while not running.done():  # a second cancellation does not cut the wait short
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({running})
                raise

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, timeout=self._timeout, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for statement in SCHEMA:
                conn.execute(statement)
            return conn

        self._conn = await asyncio.to_thread(connect)

    async def close(self) -> None:
        async with self._lock:  # after the operation in flight (its thread) is done
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await asyncio.to_thread(conn.close)

    async def watermark(self, source: str) -> datetime | None:
        row = await self._in_thread(
            lambda: (
                self._db()
                .execute("SELECT watermark FROM watermarks WHERE source = ?", (source,))
                .fetchone()
            )
        )
        return _dt(row[0]) if row else None

    async def set_watermark(self, source: str, value: datetime) -> None:
        current = await self.watermark(source)
        if current is not None and value <= current:
            return
        now = _iso(datetime.now(UTC))
        await self._in_thread(
            lambda: self._db().execute(
                "INSERT INTO watermarks VALUES (?, ?, ?) ON CONFLICT(source) DO UPDATE "
                "SET watermark = excluded.watermark, updated_at = excluded.updated_at",
                (source, _iso(value), now),
            )
        )

    async def unseen(self, source: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        wanted = set(keys)
        if not wanted:
            return set()
        ids = sorted({item for item, _ in wanted})

        def query() -> set[tuple[str, str]]:
            found: set[tuple[str, str]] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db().execute(
                    f"SELECT item_id, version FROM seen WHERE source = ? AND item_id IN ({marks})",  # noqa: S608 - placeholders only
                    (source, *chunk),
                )
                found.update((r[0], r[1]) for r in rows)
            return found

        seen = await self._in_thread(query)
        return wanted - seen

    async def published(self, source: str, item_ids: Sequence[str]) -> set[str]:
        ids = sorted(set(item_ids))

        def query() -> set[str]:
            found: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                where = f"source = ? AND outcome = 'published' AND item_id IN ({marks})"
                rows = self._db().execute(
                    f"SELECT DISTINCT item_id FROM seen WHERE {where}",  # noqa: S608 - placeholders only
                    (source, *chunk),
                )
                found.update(r[0] for r in rows)
            return found

        return await self._in_thread(query) if ids else set()

    async def mark_seen(self, source: str, records: Sequence[SeenRecord]) -> None:
        if not records:
            return
        now = _iso(datetime.now(UTC))
        rows = [
            (source, r.item_id, r.version, r.outcome, r.event_id, _iso(r.item_datetime), now)
            for r in records
        ]

        def write() -> None:
            db = self._db()
            db.execute("BEGIN")
            try:
                db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                # "database is locked", a full disk: left open, the transaction would take every
                # later statement on this connection with it (and BEGIN would fail for good)
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

        await self._in_thread(write)

    async def forget_rejection(self, source: str, item_id: str) -> int:
        def delete() -> int:
            cursor = self._db().execute(
                "DELETE FROM seen WHERE source = ? AND item_id = ? AND outcome = 'rejected'",
                (source, item_id),
            )
            return int(cursor.rowcount)

        return await self._in_thread(delete)

    async def summary(self) -> list[SourceSummary]:
        def query() -> list[SourceSummary]:
            db = self._db()
            marks = dict(db.execute("SELECT source, watermark FROM watermarks").fetchall())
            counts: dict[str, dict[str, int]] = {}
            last: dict[str, str] = {}
            for source, outcome, n, latest in db.execute(
                "SELECT source, outcome, count(*), max(seen_at) FROM seen GROUP BY source, outcome"
            ):
                counts.setdefault(source, {})[outcome] = n
                last[source] = max(last.get(source, ""), latest)
            return [
                SourceSummary(
                    source=s,
                    watermark=_dt(marks.get(s)),
                    published=counts.get(s, {}).get("published", 0),
                    rejected=counts.get(s, {}).get("rejected", 0),
                    filtered=counts.get(s, {}).get("filtered", 0),
                    last_seen_at=_dt(last.get(s)),
                )
                for s in sorted(set(marks) | set(counts))
            ]

        return await self._in_thread(query)
