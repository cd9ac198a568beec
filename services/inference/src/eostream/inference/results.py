"""The results index: one ResultsStore port, SQLAlchemy Core adapters for sqlite and PostgreSQL.

Rows are the result STAC items with the columns searches need (scene, model, time, bbox) and one
row per class share, so ``class=Forest&min_share=0.2`` is an indexed query in either database.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import datetime as DateTime
from typing import Any, Protocol, overload

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eostream.inference.tables import (
    classes_table,
    create_tables,
    deployments_table,
    metadata,
    results_table,
)


@dataclass(frozen=True)
class ResultRecord:
    id: str
    scene_id: str
    model_name: str
    model_version: str
    run_id: str | None
    datetime: DateTime | None
    bbox: tuple[float, float, float, float] | None
    prefix: str
    item: dict[str, Any]
    stats: dict[str, Any]
    created: DateTime = field(default_factory=lambda: DateTime.now(UTC))


@dataclass(frozen=True)
class ResultQuery:
    scene_id: str | None = None
    ids: Sequence[str] | None = None
    bbox: tuple[float, float, float, float] | None = None
    start: datetime | None = None
    end: datetime | None = None
    class_name: str | None = None
    min_share: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    limit: int = 100
    offset: int = 0
    #: (column of :data:`SORTABLE`, descending) keys the index sorts by, before its own order
    #: (newest first, then id); a record without the value comes last either way
    order: tuple[tuple[str, bool], ...] = ()


#: the STAC ``sortby`` fields the index sorts itself, and their columns (other fields are sorted
#: over the loaded candidates by the STAC API)
SORTABLE = {"id": "id", "datetime": "datetime", "properties.datetime": "datetime"}


class ResultsStore(Protocol):
    def init(self) -> None: ...

    def exists(self, scene_id: str, model_name: str, model_version: str) -> bool: ...

    def put(self, record: ResultRecord) -> None: ...

    def get(
        self, scene_id: str, model_version: str | None = None, model_name: str | None = None
    ) -> ResultRecord | None: ...

    def search(self, query: ResultQuery) -> tuple[list[ResultRecord], int]: ...

    def record_deployment(self, **fields: Any) -> None: ...

    def deployments(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...

    @property
    def engine(self) -> Engine: ...


class SqlResultsStore:
    """Shared SQLAlchemy Core implementation; subclasses only say how to build the engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The database, for stores that keep their tables beside the results (jobs)."""
        return self._engine

    def init(self) -> None:
        create_tables(self._engine, metadata)

    def exists(self, scene_id: str, model_name: str, model_version: str) -> bool:
        stmt = sa.select(results_table.c.id).where(
            results_table.c.scene_id == scene_id,
            results_table.c.model_name == model_name,
            results_table.c.model_version == model_version,
        )
        with self._engine.connect() as conn:
            return conn.execute(stmt).first() is not None

    def put(self, record: ResultRecord) -> None:
        """Insert or replace (same scene and model version) in one transaction."""
        bbox = record.bbox or (None, None, None, None)
        row = {
            "id": record.id,
            "scene_id": record.scene_id,
            "model_name": record.model_name,
            "model_version": record.model_version,
            "run_id": record.run_id,
            "datetime": _utc(record.datetime),
            "minx": bbox[0],
            "miny": bbox[1],
            "maxx": bbox[2],
            "maxy": bbox[3],
            "created": _utc(record.created),
            "prefix": record.prefix,
            "item": json.dumps(record.item),
            "stats": json.dumps(record.stats),
        }
        shares = [
            {
                "result_id": record.id,
                "class_name": name,
                "share": float(v["share"]),
                "area_km2": float(v["area_km2"]),
            }
            for name, v in record.stats.get("classes", {}).items()
        ]
        with self._engine.begin() as conn:
            old = sa.select(results_table.c.id).where(
                (results_table.c.id == record.id)
                | (
                    (results_table.c.scene_id == record.scene_id)
                    & (results_table.c.model_name == record.model_name)
                    & (results_table.c.model_version == record.model_version)
                )
            )
            old_ids = [r[0] for r in conn.execute(old)]
            if old_ids:
                conn.execute(classes_table.delete().where(classes_table.c.result_id.in_(old_ids)))
                conn.execute(results_table.delete().where(results_table.c.id.in_(old_ids)))
            conn.execute(results_table.insert(), [row])
            if shares:
                conn.execute(classes_table.insert(), shares)

    def get(
        self, scene_id: str, model_version: str | None = None, model_name: str | None = None
    ) -> ResultRecord | None:
        """One result of a scene: model ``model_name``'s ``model_version`` when both are given
        (at most one row). Version numbers are per registered model (v3 of one model is not v3
        of another), so a caller that knows the model names it; one that does not gets the
        newest matching result: the latest ``created``, ties to the smallest item id (the same
        order as :meth:`search`), never an arbitrary row."""
        records, _ = self.search(
            ResultQuery(
                scene_id=scene_id, model_name=model_name, model_version=model_version, limit=1
            )
        )
        return records[0] if records else None

    def _where(self, q: ResultQuery) -> list[Any]:
        c = results_table.c
        where: list[Any] = []
        if q.scene_id is not None:
            where.append(c.scene_id == q.scene_id)
        if q.ids:
            where.append(c.id.in_(list(q.ids)))
        if q.model_name is not None:
            where.append(c.model_name == q.model_name)
        if q.model_version is not None:
            where.append(c.model_version == q.model_version)
        if q.start is not None:
            where.append(c.datetime >= _utc(q.start))
        if q.end is not None:
            where.append(c.datetime <= _utc(q.end))
        if q.bbox is not None:
            where += bbox_overlaps(c.minx, c.miny, c.maxx, c.maxy, q.bbox)
        if q.class_name is not None:
            sub = sa.select(classes_table.c.result_id).where(
                classes_table.c.class_name == q.class_name,
                # without min_share: present at all (statistics list every class of the model,
                # at 0 too), as subscriptions read the same request
                classes_table.c.share > 0.0
                if q.min_share is None
                else classes_table.c.share >= q.min_share,
            )
            where.append(c.id.in_(sub))
        return where

    def search(self, query: ResultQuery) -> tuple[list[ResultRecord], int]:
        where = self._where(query)
        c = results_table.c
        keys = [
            (c[column].desc() if descending else c[column].asc()).nulls_last()
            for column, descending in query.order
        ]
        stmt = (
            sa.select(results_table)
            .where(*where)
            .order_by(*keys, c.created.desc(), c.id)
            .limit(query.limit)
            .offset(query.offset)
        )
        count = sa.select(sa.func.count()).select_from(results_table).where(*where)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
            total = int(conn.execute(count).scalar_one())
        return [_record(r) for r in rows], total

    def record_deployment(self, **fields: Any) -> None:
        fields.setdefault("time", datetime.now(UTC))
        with self._engine.begin() as conn:
            conn.execute(deployments_table.insert(), [fields])

    def deployments(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]:
        """The latest deployments, newest first; only model ``name``'s when given."""
        stmt = sa.select(deployments_table).order_by(deployments_table.c.id.desc()).limit(limit)
        if name is not None:
            stmt = stmt.where(deployments_table.c.name == name)
        with self._engine.connect() as conn:
            return [
                {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()}
                for r in conn.execute(stmt).mappings().all()
            ]

    def ping(self) -> bool:
        try:
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def close(self) -> None:
        self._engine.dispose()


def bbox_overlaps(
    minx: Any, miny: Any, maxx: Any, maxy: Any, bbox: tuple[float, float, float, float]
) -> list[Any]:
    """The conditions (all must hold) under which the stored box ``minx..maxy`` meets ``bbox``.

    A box whose west is east of its east (``minx > maxx``, as STAC and GeoJSON write one across
    the antimeridian, e.g. ``[179, -17, -179, -16]``) covers ``minx..180`` and ``-180..maxx``;
    this holds for the stored box and for ``bbox`` alike. Two boxes that both cross always meet
    in longitude; one that does not cross meets one that does if it reaches east of the
    crossing one's west or west of its east. Two boxes that do not cross keep the plain
    comparison (``minx <= east and maxx >= west``) as its own branch of the OR, and the
    latitudes stay separate conditions, so the other, indexed conditions of a search (scene,
    time, ids) narrow it as before. A row without a bbox (NULLs) meets nothing."""
    west, south, east, north = bbox
    crossing_row = minx > maxx
    if west <= east:
        longitude = sa.or_(
            sa.and_(minx <= east, maxx >= west),
            sa.and_(crossing_row, sa.or_(minx <= east, maxx >= west)),
        )
    else:  # the query crosses: it covers west..180 and -180..east
        longitude = sa.or_(maxx >= west, minx <= east, crossing_row)
    return [longitude, miny <= north, maxy >= south]


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: datetime | None) -> datetime | None:
    """A time as UTC (a naive one is taken as UTC). sqlite keeps a time's wall-clock fields
    and drops its offset, so times are written and compared in UTC to compare as instants
    (``12:30+01:00`` is 11:30Z); PostgreSQL's timestamptz compares them so anyway."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record(row: Any) -> ResultRecord:
    bbox = None
    if row["minx"] is not None:
        bbox = (row["minx"], row["miny"], row["maxx"], row["maxy"])
    when = row["datetime"]
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    created = row["created"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return ResultRecord(
        id=row["id"],
        scene_id=row["scene_id"],
        model_name=row["model_name"],
        model_version=row["model_version"],
        run_id=row["run_id"],
        datetime=when,
        bbox=bbox,
        prefix=row["prefix"],
        item=json.loads(row["item"]),
        stats=json.loads(row["stats"]),
        created=created,
    )


class SqliteResultsStore(SqlResultsStore):
    """Embedded mode: one file (or ``sqlite://`` in memory), WAL for concurrent readers."""

    def __init__(self, url: str) -> None:
        from pathlib import Path

        from sqlalchemy.pool import StaticPool

        path = url.removeprefix("sqlite:///")
        if path and path != url and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False},
            poolclass=StaticPool if memory else None,
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if not memory:
                _wal(cursor)
            cursor.close()

        super().__init__(engine)


def _wal(cursor: Any, seconds: float = 30.0) -> None:
    """Switch a sqlite database to WAL. Replicas opening a new file at once: the switch needs
    the file to itself and, on busy cores, answered "database is locked" (after the driver's
    own 5 s busy wait) while another connection had it; that one's switch is for good, so try
    again, for ``seconds`` beyond those waits."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class PostgresResultsStore(SqlResultsStore):
    """Full stack: PostgreSQL through psycopg 3 (``postgresql://`` URLs are accepted)."""

    def __init__(self, url: str) -> None:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        super().__init__(sa.create_engine(url, pool_pre_ping=True, pool_size=5))


def class_names(results: ResultsStore) -> list[str]:
    """The classes of every indexed result (what a CQL2 filter on class shares may name)."""
    stmt = sa.select(classes_table.c.class_name).distinct().order_by(classes_table.c.class_name)
    with results.engine.connect() as conn:
        return [str(row[0]) for row in conn.execute(stmt)]


def extent(
    results: ResultsStore,
) -> tuple[list[float] | None, list[str | None]]:
    """The indexed results' extent, as a STAC collection says it: their bbox (None without any)
    and first and last acquisition time (RFC 3339, None where unknown)."""
    c = results_table.c
    across = sa.func.max(sa.case((c.minx > c.maxx, 1), else_=0))  # a bbox over the antimeridian
    stmt = sa.select(
        sa.func.min(c.minx), sa.func.min(c.miny), sa.func.max(c.maxx), sa.func.max(c.maxy),
        sa.func.min(c.datetime), sa.func.max(c.datetime), across,
    )  # fmt: skip
    with results.engine.connect() as conn:
        row = conn.execute(stmt).one()
    box = [float(v) for v in row[:4]] if all(v is not None for v in row[:4]) else None
    if box is not None and row[6]:  # min and max of such boxes make no box: all longitudes
        box[0], box[2] = -180.0, 180.0
    times = [_utc(v).isoformat().replace("+00:00", "Z") if v else None for v in row[4:6]]
    return box, times


def build_results_store(url: str) -> ResultsStore:
    store: SqlResultsStore
    if url.startswith("sqlite"):
        store = SqliteResultsStore(url)
    elif url.startswith("postgres"):
        store = PostgresResultsStore(url)
    else:
        raise ValueError(f"unsupported results database URL {url!r} (sqlite:/// or postgresql://)")
    store.init()
    return store
