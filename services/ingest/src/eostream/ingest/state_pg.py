"""The PostgreSQL adapter of the watcher's state (full stack): schema ``ingest`` (by default) in
the ``results`` database. Same tables and semantics as the sqlite adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from eostream.ingest.errors import SourceUnavailable
from eostream.ingest.state import SeenRecord, SourceSummary
from eostream.shared.errors import ConfigError


class PostgresStateStore:
    """One connection, its operations serialised by a lock as in the sqlite adapter: the scene
    and label watchers share the store, and a statement of one sent while the other's
    transaction block is open would run inside that transaction (and roll back with it)."""

    def __init__(self, dsn: str, *, database: str | None = None, schema: str = "ingest") -> None:
        self._conninfo = make_conninfo(dsn, dbname=database) if database else dsn
        self._schema = schema
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._lock = asyncio.Lock()

    def _db(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None:
            raise RuntimeError("PostgresStateStore.open() must be awaited first")
        if self._conn.closed or self._conn.broken:
            raise SourceUnavailable("the connection to PostgreSQL was lost; reconnecting")
        return self._conn

    async def _connect(self) -> None:
        try:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(f"cannot reach PostgreSQL for the ingest state: {exc}") from exc

    async def _revive(self) -> None:
        """After a lost connection (the poll failed and backed off): connect again."""
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            await self._connect()

    async def open(self) -> None:
        try:
            await self._connect()
        except SourceUnavailable as exc:
            raise ConfigError(f"{exc}: is it running, and is INGEST_PG_DSN right?") from None
        s = sql.Identifier(self._schema)
        async with self._db().transaction():
            await self._db().execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
            await self._db().execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.watermarks (source TEXT PRIMARY KEY, "
                    "watermark TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL)"
                ).format(s)
            )
            await self._db().execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.seen (source TEXT NOT NULL,"
                    " item_id TEXT NOT NULL,"
                    " version TEXT NOT NULL, outcome TEXT NOT NULL, event_id TEXT,"
                    " item_datetime TIMESTAMPTZ, seen_at TIMESTAMPTZ NOT NULL,"
                    " PRIMARY KEY (source, item_id, version))"
                ).format(s)
            )

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    def _t(self, table: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self._schema), sql.Identifier(table))

    async def watermark(self, source: str) -> datetime | None:
        async with self._lock:
            await self._revive()
            cur = await self._db().execute(
                sql.SQL("SELECT watermark FROM {} WHERE source = %s").format(self._t("watermarks")),
                (source,),
            )
            row = await cur.fetchone()
            return row[0] if row else None  # type: ignore[return-value]

    async def set_watermark(self, source: str, value: datetime) -> None:
        async with self._lock:
            await self._db().execute(
                sql.SQL(
                    "INSERT INTO {t} VALUES (%s, %s, now()) ON CONFLICT (source) DO UPDATE "
                    "SET watermark = excluded.watermark, updated_at = now() "
                    "WHERE {t}.watermark < excluded.watermark"
                ).format(t=self._t("watermarks")),
                (source, value),
            )

    async def unseen(self, source: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        async with self._lock:
            wanted = set(keys)
            if not wanted:
                return set()
            await self._revive()
            cur = await self._db().execute(
                sql.SQL(
                    "SELECT item_id, version FROM {} WHERE source = %s AND item_id = ANY(%s)"
                ).format(self._t("seen")),
                (source, sorted({i for i, _ in wanted})),
            )
            seen = {(str(r[0]), str(r[1])) for r in await cur.fetchall()}
            return wanted - seen

    async def published(self, source: str, item_ids: Sequence[str]) -> set[str]:
        async with self._lock:
            if not item_ids:
                return set()
            await self._revive()
            cur = await self._db().execute(
                sql.SQL(
                    "SELECT DISTINCT item_id FROM {} WHERE source = %s AND outcome = 'published' "
                    "AND item_id = ANY(%s)"
                ).format(self._t("seen")),
                (source, sorted(set(item_ids))),
            )
            return {str(r[0]) for r in await cur.fetchall()}

    async def mark_seen(self, source: str, records: Sequence[SeenRecord]) -> None:
        async with self._lock:
            if not records:
                return
            now = datetime.now(UTC)
            async with self._db().transaction(), self._db().cursor() as cur:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                    ).format(self._t("seen")),
                    [
                        (source, r.item_id, r.version, r.outcome, r.event_id, r.item_datetime, now)
                        for r in records
                    ],
                )

    async def forget_rejection(self, source: str, item_id: str) -> int:
        async with self._lock:
            await self._revive()
            cur = await self._db().execute(
                sql.SQL(
                    "DELETE FROM {} WHERE source = %s AND item_id = %s AND outcome = 'rejected'"
                ).format(self._t("seen")),
                (source, item_id),
            )
            return int(cur.rowcount)

    async def summary(self) -> list[SourceSummary]:
        async with self._lock:
            cur = await self._db().execute(
                sql.SQL("SELECT source, watermark FROM {}").format(self._t("watermarks"))
            )
            marks = {str(r[0]): r[1] for r in await cur.fetchall()}
            cur = await self._db().execute(
                sql.SQL(
                    "SELECT source, outcome, count(*), max(seen_at) FROM {} "
                    "GROUP BY source, outcome"
                ).format(self._t("seen"))
            )
            counts: dict[str, dict[str, int]] = {}
            last: dict[str, datetime] = {}
            for source, outcome, n, latest in await cur.fetchall():
                counts.setdefault(str(source), {})[str(outcome)] = int(n)  # type: ignore[call-overload]
                prev = last.get(str(source))
                last[str(source)] = latest if prev is None or latest > prev else prev  # type: ignore[assignment,operator]
            return [
                SourceSummary(
                    source=s,
                    watermark=marks.get(s),  # type: ignore[arg-type]
                    published=counts.get(s, {}).get("published", 0),
                    rejected=counts.get(s, {}).get("rejected", 0),
                    filtered=counts.get(s, {}).get("filtered", 0),
                    last_seen_at=last.get(s),
                )
                for s in sorted(set(marks) | set(counts))
            ]
