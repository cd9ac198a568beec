"""PostgreSQL LISTEN/NOTIFY on new items of a pgstac database (the STAC API's own).

:func:`install_trigger` puts (idempotently) an AFTER INSERT OR UPDATE row trigger on the
partitioned parent ``pgstac.items``; PostgreSQL clones it onto every partition, those pgstac
creates later included. It sends ``{"id", "collection"}`` on the channel (a few hundred bytes,
far below NOTIFY's 8000-byte limit; the item itself is read from the STAC API), delivered when
the inserting transaction commits. :class:`NotifyListener` LISTENs (psycopg 3, async) and hands
each notification to :class:`eostream.ingest.arrivals.Arrivals`, reconnecting with a bounded
backoff; what it misses while disconnected, the next poll finds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import psycopg
from psycopg import sql

from eostream.ingest import metrics
from eostream.ingest.arrivals import Arrival, arrival_from_data
from eostream.ingest.errors import PushRefused

log = logging.getLogger(__name__)

FUNCTION = "public.eostream_notify_item"
_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text := json_build_object('id', NEW.id, 'collection', NEW.collection)::text;
BEGIN
    IF octet_length(payload) < 8000 THEN  -- never fail the insert: an odd id is polled instead
        PERFORM pg_notify(TG_ARGV[0], payload);
    END IF;
    RETURN NULL;
END $$"""


def trigger_name(channel: str) -> str:
    return f"eostream_notify_{channel}"


async def install_trigger(dsn: str, channel: str) -> bool:
    """Create the function and the trigger on ``pgstac.items`` unless there; True if created."""
    name = trigger_name(channel)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=False) as conn:
        async with conn.transaction():
            # one installer at a time (two replicas starting together)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('eostream_notify_item'))")
            await conn.execute(_FUNCTION_SQL)
            found = await conn.execute(
                "SELECT 1 FROM pg_trigger WHERE tgname = %s "
                "AND tgrelid = 'pgstac.items'::regclass AND tgparentid = 0",
                (name,),
            )
            if await found.fetchone() is not None:
                return False
            await conn.execute(
                sql.SQL(
                    "CREATE TRIGGER {} AFTER INSERT OR UPDATE ON pgstac.items "
                    "FOR EACH ROW EXECUTE FUNCTION {}({})"
                ).format(sql.Identifier(name), sql.SQL(FUNCTION), sql.Literal(channel))
            )
    log.info("NOTIFY trigger %s installed on pgstac.items (channel %s)", name, channel)
    return True


async def drop_trigger(dsn: str, channel: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON pgstac.items").format(
                sql.Identifier(trigger_name(channel))
            )
        )


def arrival_of(payload: str) -> Arrival:
    """The arrival a NOTIFY payload names; raises PushRefused (422) for a payload without one."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise PushRefused(422, "invalid_notification", "payload is not JSON") from None
    return arrival_from_data(data, subject=None, via="notify", notice=None)


class NotifyListener:
    """LISTEN on ``channel`` and hand each item to ``take`` until stopped; reconnects."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        take: Callable[[Arrival], Awaitable[object]],
        *,
        reconnect: float = 1.0,
        reconnect_max: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._take = take
        self._reconnect = reconnect
        self._reconnect_max = reconnect_max
        self.listening = False
        self.error: str | None = None
        self.connections = 0  # LISTENs done so far: 1 + reconnections

    def readiness(self) -> tuple[bool, str]:
        if self.listening:
            return True, f"listening on {self._channel}"
        return False, f"NOTIFY {self._channel}: {self.error or 'not listening yet'}"

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await self._listen(stop)
                failures = 0
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                failures += 1
                self.listening = False
                self.error = f"{type(exc).__name__}: {exc}"[:300]
                delay = min(self._reconnect_max, self._reconnect * 2 ** (failures - 1))
                log.warning("NOTIFY %s: %s; reconnecting in %.1fs", self._channel, exc, delay)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
        self.listening = False

    async def _listen(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self.listening, self.error = True, None
            self.connections += 1
            log.info("NOTIFY: listening on %s", self._channel)
            while not stop.is_set():
                async for note in conn.notifies(timeout=0.5):
                    await self._one(note.payload)
                    if stop.is_set():
                        break

    async def _one(self, payload: str) -> None:
        try:
            await self._take(arrival_of(payload))
        except PushRefused as exc:  # not watched, gone again: the poll decides
            log.info("NOTIFY %s: %s: %s", self._channel, exc.code, exc.description)
        except Exception:  # one item's trouble must not end the listener
            metrics.NOTIFICATIONS.labels("notify", "failed").inc()
            log.exception("NOTIFY %s: taking %s failed; the poll will", self._channel, payload)
