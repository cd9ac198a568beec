"""Replicas starting at once on a new results database: each creates the tables it finds
missing (results, their classes, deployments, jobs, subscriptions and deliveries). Two CREATEs
of one table collide ("already exists") unless they take turns: ``create_tables`` takes a
PostgreSQL advisory lock, and on sqlite tries again. The replicas are processes, released at
once. The PostgreSQL case needs `deploy/local/stack up`; it fails without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

REPLICAS = 4
TABLES = {
    "results",
    "result_classes",
    "deployments",
    "jobs",
    "subscriptions",
    "subscription_deliveries",
}
#: what an inference replica does with the index on start (once the go file is there)
REPLICA = """
import sys, time
from pathlib import Path
from eostream.inference.jobs import JobStore
from eostream.inference.results import build_results_store
from eostream.inference.subscriptions.store import SubscriptionStore

print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
store = build_results_store(sys.argv[1])  # creates the results' tables
JobStore(store.engine)
SubscriptionStore(store.engine).init()
store.close()
"""


def _start_replicas(url: str, go: Path) -> set[str]:
    """Start the replicas, release them together; the tables made."""
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", REPLICA, url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(REPLICAS)
    ]
    try:
        for replica in replicas:  # each one has imported eostream
            assert replica.stdout is not None
            if replica.stdout.readline() != "ready\n":
                pytest.fail(f"a replica did not start: {replica.communicate(timeout=60)[1]}")
        go.touch()
        errors = [replica.communicate(timeout=60)[1] for replica in replicas]
    finally:
        for replica in replicas:
            replica.kill()
    assert [r.returncode for r in replicas] == [0] * REPLICAS, "\n".join(errors)
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.stack
def test_replicas_starting_at_once_on_a_new_postgresql_database_all_start(
    own_results_db: str, tmp_path: Path
) -> None:
    assert TABLES <= _start_replicas(own_results_db, tmp_path / "go")


def test_replicas_starting_at_once_on_a_new_sqlite_index_all_start(tmp_path: Path) -> None:
    assert TABLES <= _start_replicas(f"sqlite:///{tmp_path}/results.db", tmp_path / "go")
