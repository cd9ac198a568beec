"""The on-disk log under the durable embedded bus: topics, committed offsets and group leases in
one SQLite file (WAL mode). Blocking; :class:`~eostream.shared.bus.sqlite.SqliteBus` runs every
call on its one database thread.

* ``records``: every topic is an append-only sequence of records (offset from 0, key, value,
  headers, timestamp), one partition per topic, like the in-process bus. Appends take the write
  lock (``BEGIN IMMEDIATE``), so offsets stay dense across processes.
* ``offsets``: the committed offset of each (group, topic): the next record the group handles.
* ``leases``: which consumer holds each (group, topic), so a group's records go to one member at
  a time, as a Kafka partition goes to one member of its group. A lease lapses when its holder's
  process is gone (checked by pid: a SIGKILLed consumer's record is handed over at once), when
  its holder closed, or when it was not renewed for :data:`LEASE_SECONDS`.

Every commit is fenced: it lands only while its consumer still holds the lease.
Appends commit with ``synchronous=FULL``: a record whose publish returned survives a power cut,
not only a crash. Offset commits and leases use ``NORMAL`` (WAL): a power cut may undo the last
commits, which only means a redelivery.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from eostream.shared.codec import WireMessage
from eostream.shared.errors import ConfigError

SCHEMA_VERSION = 1
#: A lease not renewed for this long is free (its holder hung or its pid was reused).
LEASE_SECONDS = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    "offset" INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,
    timestamp REAL NOT NULL,
    PRIMARY KEY (topic, "offset")
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    committed INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (grp, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (grp, topic)
) WITHOUT ROWID;
"""

#: Owners (consumer tokens) alive in this process: a lease of this pid held by another token is
#: a leftover of a consumer that ended without releasing it.
_live_owners: set[str] = set()
_live_lock = threading.Lock()


def register_owner(owner: str) -> None:
    with _live_lock:
        _live_owners.add(owner)


def forget_owner(owner: str) -> None:
    with _live_lock:
        _live_owners.discard(owner)


def _holder_alive(owner: str, pid: int) -> bool:
    if pid == os.getpid():
        with _live_lock:
            return owner in _live_owners
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def encode_headers(headers: dict[str, bytes]) -> str:
    """Header values are bytes; latin-1 maps each byte to one character and back, losslessly."""
    return json.dumps({name: value.decode("latin-1") for name, value in headers.items()})


def decode_headers(text: str) -> dict[str, bytes]:
    return {name: value.encode("latin-1") for name, value in json.loads(text).items()}


@dataclass(frozen=True)
class Record:
    topic: str
    offset: int
    message: WireMessage
    timestamp: float


class SqliteLog:
    """One connection to the log file; not thread-safe by itself (the bus gives it one thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # appends ask for FULL (durable)
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, SCHEMA_VERSION):
                raise ConfigError(
                    f"{path} is a bus log of schema {version}; this eostream reads "
                    f"{SCHEMA_VERSION}: use another home, or the eostream that wrote it"
                )
            with self._write():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the bus log {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _write(self) -> _Transaction:
        return _Transaction(self._db)

    # -- topics and records ------------------------------------------------------------------

    def ensure_topics(self, topics: Iterable[str]) -> None:
        with self._write():
            self._db.executemany(
                "INSERT OR IGNORE INTO topics (name, created) VALUES (?, ?)",
                [(t, time.time()) for t in topics],
            )

    def topics(self) -> list[str]:
        rows = self._db.execute(
            "SELECT name FROM topics UNION SELECT DISTINCT topic FROM records ORDER BY 1"
        )
        return [str(r[0]) for r in rows]

    def append(self, topic: str, messages: Sequence[WireMessage]) -> int:
        """Append in one transaction; return the offset of the first record."""
        now = time.time()
        # This commit syncs the WAL (and every commit before it): a publish that returned is on
        # disk. Commits and leases need not: losing one to a power cut means a redelivery.
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            with self._write():
                first = self.end(topic)
                self._db.executemany(
                    'INSERT INTO records (topic, "offset", key, value, headers, timestamp) '
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (topic, first + i, m.key, m.value, encode_headers(m.headers), now)
                        for i, m in enumerate(messages)
                    ],
                )
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")
        return first

    def end(self, topic: str) -> int:
        """The offset the next record of ``topic`` gets (its number of records)."""
        row = self._db.execute(
            'SELECT MAX("offset") FROM records WHERE topic = ?', (topic,)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def read(self, topic: str, start: int = 0, limit: int = -1) -> list[Record]:
        rows = self._db.execute(
            'SELECT "offset", key, value, headers, timestamp FROM records '
            'WHERE topic = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?',
            (topic, start, limit),
        )
        return [
            Record(
                topic,
                int(offset),
                WireMessage(key=key, value=value, headers=decode_headers(headers)),
                float(ts),
            )
            for offset, key, value, headers, ts in rows
        ]

    # -- groups -----------------------------------------------------------------------------

    def committed(self, group: str, topic: str) -> int:
        row = self._db.execute(
            "SELECT committed FROM offsets WHERE grp = ? AND topic = ?", (group, topic)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def commit(self, group: str, topic: str, offset: int, owner: str) -> bool:
        """Commit ``offset`` (the next record to handle) if ``owner`` holds the lease."""
        with self._write():
            held = self._db.execute(
                "SELECT 1 FROM leases WHERE grp = ? AND topic = ? AND owner = ?",
                (group, topic, owner),
            ).fetchone()
            if held is None:
                return False
            self._db.execute(
                "INSERT INTO offsets (grp, topic, committed, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (grp, topic) DO UPDATE SET "
                "committed = MAX(committed, excluded.committed), updated = excluded.updated",
                (group, topic, offset, time.time()),
            )
        return True

    def acquire(self, group: str, topics: Sequence[str], owner: str) -> set[str]:
        """Take or renew the leases of ``topics`` that are free or ours; return those held."""
        now = time.time()
        rows = {
            str(topic): (str(holder), int(pid), float(expires))
            for topic, holder, pid, expires in self._db.execute(
                "SELECT topic, owner, pid, expires FROM leases WHERE grp = ?", (group,)
            )
        }

        def needs_write(topic: str) -> bool:
            held = rows.get(topic)
            if held is None:
                return True
            holder, pid, expires = held
            if holder == owner:
                return expires - now < LEASE_SECONDS / 2  # renew in good time
            return expires < now or not _holder_alive(holder, pid)

        if not any(needs_write(t) for t in topics):
            return {t for t in topics if rows.get(t, ("",))[0] == owner}
        held_now: set[str] = set()
        with self._write():  # read again under the write lock: another process may have won
            for topic in topics:
                row = self._db.execute(
                    "SELECT owner, pid, expires FROM leases WHERE grp = ? AND topic = ?",
                    (group, topic),
                ).fetchone()
                free = (
                    row is None
                    or row[0] == owner
                    or float(row[2]) < now
                    or not _holder_alive(str(row[0]), int(row[1]))
                )
                if free:
                    self._db.execute(
                        "INSERT INTO leases (grp, topic, owner, pid, expires) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (grp, topic) DO UPDATE SET "
                        "owner = excluded.owner, pid = excluded.pid, expires = excluded.expires",
                        (group, topic, owner, os.getpid(), now + LEASE_SECONDS),
                    )
                    held_now.add(topic)
        return held_now

    def release(self, group: str, owner: str) -> None:
        with self._write():
            self._db.execute("DELETE FROM leases WHERE grp = ? AND owner = ?", (group, owner))

    def lag(self, group: str, topic: str) -> int:
        return max(0, self.end(topic) - self.committed(group, topic))


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): one writer at a time."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
