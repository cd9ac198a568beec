"""One active poller per ingest state: the others stand by (ADR 0006).

Ingest polls; it is not a consumer-group member, so two replicas on one state would both announce
every new item. The replica that holds the state's *leader lock* polls (and consumes replay
requests); the others try the lock every ``leader_retry_seconds`` and take over when the holder
dies, because the lock dies with it:

* ``INGEST_STATE=postgres``: a session-level advisory lock (``pg_try_advisory_lock``) on the
  state database, on a connection of its own; the key is derived from the database and schema, so
  two deployments with their own schemas do not exclude each other. PostgreSQL releases it when
  the session ends (the process died, or the connection broke);
* ``INGEST_STATE=sqlite``: an exclusive ``fcntl.flock`` on ``<sqlite file>.leader`` beside the
  state file; the kernel releases it when the process dies.

The leader checks every ``leader_retry_seconds`` that it still holds the lock (a PostgreSQL
connection can break); when it does not, it finishes the page in flight and stands by.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg
from psycopg.conninfo import make_conninfo

from eostream.ingest import metrics

log = logging.getLogger(__name__)

Role = Literal["starting", "standby", "leader", "stopped"]


class LeaderLock(Protocol):
    #: what is locked, for logs and readiness
    description: str
    #: why the last try could not even ask ("" when it could)
    error: str

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits for it."""

    async def held(self) -> bool:
        """Whether this process still holds the lock it took."""

    async def release(self) -> None: ...


class FileLeaderLock:
    """An exclusive flock on a file beside the sqlite state (same host, shared volume)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"the file lock {path}"
        self.error = ""
        self._fd: int | None = None

    def _take(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
        self._fd = fd
        return True

    async def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        return await asyncio.to_thread(self._take)

    async def held(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def advisory_key(database: str, schema: str) -> int:
    """A signed 64-bit advisory lock key for one ingest state (database + schema)."""
    digest = hashlib.sha256(f"eostream-ingest-leader:{database}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLeaderLock:
    """A session-level advisory lock on the ingest state's database, on its own connection."""

    def __init__(self, dsn: str, *, database: str | None, schema: str) -> None:
        self._conninfo = make_conninfo(dsn, dbname=database) if database else dsn
        self.key = advisory_key(database or "", schema)
        self.description = f"the PostgreSQL advisory lock {self.key} (schema {schema})"
        self.error = ""
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._held = False

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        self._held = False  # a new session holds nothing
        self._conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, application_name="eostream-ingest-leader"
        )
        return self._conn

    async def try_acquire(self) -> bool:
        if self._held and await self.held():
            return True
        try:
            conn = await self._connection()
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cur.fetchone()
        except psycopg.Error as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("cannot try %s: %s", self.description, self.error)
            await self._drop()
            return False
        self.error = ""
        self._held = bool(row and row[0])
        return self._held

    async def held(self) -> bool:
        conn = self._conn
        if not self._held or conn is None:
            return False
        try:
            await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            log.error("lost the connection that holds %s: %s", self.description, exc)
            await self._drop()
            return False
        return True

    async def release(self) -> None:
        conn = self._conn
        if self._held and conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class Leadership:
    """Runs ``lead`` while this process holds the lock; stands by (retrying) otherwise."""

    def __init__(self, lock: LeaderLock, *, retry_seconds: float = 5.0) -> None:
        self.lock = lock
        self.retry_seconds = retry_seconds
        self.role: Role = "starting"
        self.terms = 0  # how many times this process became the leader

    def _set(self, role: Role) -> None:
        self.role = role
        metrics.LEADER.set(1 if role == "leader" else 0)

    async def run(
        self, stop: asyncio.Event, lead: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    ) -> None:
        """Until ``stop``: take the lock when free and run ``lead(resign)`` while it is held.

        ``resign`` is set when ``stop`` is set or the lock is lost; ``lead`` then finishes what
        it is doing and returns. An error from ``lead`` releases the lock and is raised.
        """
        try:
            while not stop.is_set():
                if not await self.lock.try_acquire():
                    if self.role != "standby":
                        log.info(
                            "standby: another ingest holds %s; trying again every %.0fs",
                            self.lock.description,
                            self.retry_seconds,
                        )
                    self._set("standby")
                    await _wait(stop, self.retry_seconds)
                    continue
                self.terms += 1
                self._set("leader")
                log.info("leader: took %s; polling", self.lock.description)
                if await self._term(stop, lead):
                    return
                self._set("standby")
        finally:
            await self.lock.release()
            self._set("stopped")

    async def _term(
        self, stop: asyncio.Event, lead: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    ) -> bool:
        """One term as leader; True when the leader should not try again (stop, or lead ended)."""
        resign = asyncio.Event()
        task = asyncio.create_task(lead(resign), name="ingest-leader")
        stopping = asyncio.create_task(stop.wait())
        try:
            while not task.done():
                await asyncio.wait(
                    {task, stopping},
                    timeout=self.retry_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if task.done():
                    break
                if stop.is_set():
                    resign.set()
                    await task
                    break
                if not await self.lock.held():
                    log.error(
                        "lost %s; standing by after the work in flight", self.lock.description
                    )
                    resign.set()
                    await task
                    await self.lock.release()
                    return False
        finally:
            stopping.cancel()
            if not task.done():
                resign.set()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        task.result()  # an error in lead: raised here, the lock released by run()
        return True

    def readiness(self) -> tuple[bool, str] | None:
        """A standby's readiness (ready: it does what a standby should); None when leading."""
        if self.role == "standby" and self.lock.error:
            return False, f"standby: cannot try {self.lock.description}: {self.lock.error}"
        if self.role == "standby":
            return True, (
                f"standby: another ingest replica holds {self.lock.description}; "
                f"trying again every {self.retry_seconds:.0f}s"
            )
        if self.role in ("starting", "stopped"):
            return False, self.role
        return None


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
