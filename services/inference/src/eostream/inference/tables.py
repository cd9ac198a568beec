"""The inference database's tables: the results index (one row per result, one per class share),
the deployments log and the OGC API - Processes jobs; and creating them when several replicas
start at once on a new database (:func:`create_tables`).

The subscriptions' tables are in :mod:`.subscriptions.store`, on the same engine.
"""

from __future__ import annotations

import contextlib
import threading

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

results_table = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.String(600), primary_key=True),
    sa.Column("scene_id", sa.String(256), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(100), nullable=False),
    sa.Column("run_id", sa.String(100)),
    sa.Column("datetime", sa.DateTime(timezone=True), index=True),
    sa.Column("minx", sa.Float),
    sa.Column("miny", sa.Float),
    sa.Column("maxx", sa.Float),
    sa.Column("maxy", sa.Float),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("prefix", sa.String(1000), nullable=False),
    sa.Column("item", sa.Text, nullable=False),
    sa.Column("stats", sa.Text, nullable=False),
    sa.UniqueConstraint("scene_id", "model_name", "model_version", name="uq_results_scene_model"),
)
classes_table = sa.Table(
    "result_classes",
    metadata,
    sa.Column(
        "result_id",
        sa.String(600),
        sa.ForeignKey("results.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("class_name", sa.String(100), primary_key=True),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("area_km2", sa.Float, nullable=False),
    sa.Index("ix_result_classes_share", "class_name", "share"),
)
deployments_table = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.String(100), nullable=False),
    sa.Column("alias", sa.String(100)),
    sa.Column("run_id", sa.String(100)),
    sa.Column("sha256", sa.String(64)),
    sa.Column("artifact_uri", sa.Text),
    sa.Column("mlm_item_href", sa.Text),
    sa.Column("provider", sa.String(100)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
)

#: OGC API - Processes jobs (``eostream.inference.jobs``), kept beside the results they make
jobs_table = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("process_id", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("progress", sa.Integer, nullable=False, default=0),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("started", sa.DateTime(timezone=True)),
    sa.Column("finished", sa.DateTime(timezone=True)),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("model_name", sa.String(200)),
    sa.Column("model_version", sa.String(100)),
    sa.Column("result", sa.Text),
    sa.Column("error_code", sa.String(100)),
)


#: the PostgreSQL advisory lock taken while tables are created (any fixed number: ours)
SCHEMA_LOCK = 0x656F7374  # "eost"
#: sqlite has no advisory locks: this process's stores take turns, other processes retry
_SCHEMA_TURNS = threading.Lock()
_SCHEMA_TRIES = 5


def create_tables(engine: Engine, tables: sa.MetaData | sa.Table) -> None:
    """Create what is missing of ``tables``, one store at a time: replicas starting at once on
    a new database would otherwise both find a table missing and the second CREATE fail
    ("already exists"). On PostgreSQL they take turns under an advisory lock; on sqlite this
    process's stores take turns and a CREATE that another process beat is tried again."""
    sqlite = engine.dialect.name == "sqlite"
    for attempt in range(1, _SCHEMA_TRIES + 1):
        try:
            with _SCHEMA_TURNS if sqlite else contextlib.nullcontext(), engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK}
                    )
                if isinstance(tables, sa.MetaData):
                    tables.create_all(conn)
                else:
                    tables.create(conn, checkfirst=True)
            return
        # sqlite's "table ... already exists" (PostgreSQL's would be an IntegrityError or a
        # ProgrammingError; its lock leaves none to retry)
        except sa.exc.OperationalError as exc:
            if not sqlite or attempt == _SCHEMA_TRIES or "already exists" not in str(exc.orig):
                raise
