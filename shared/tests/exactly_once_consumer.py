"""A consumer process for the exactly-once test: applies each event's effect to sqlite.

The effect and the idempotency key (the event id) are written in one transaction, so a record
that is delivered again after a crash changes nothing. Every delivery is also counted, to show
how many duplicates were absorbed.

Usage: python exactly_once_consumer.py BOOTSTRAP TOPIC GROUP DB DEAD_LETTER_TOPIC
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys

from eostream.shared.bus import Delivery
from eostream.shared.bus.kafka import KafkaBus
from eostream.shared.events import Event
from eostream.shared.runtime import install_stop_signals
from eostream.shared.settings import KafkaSettings


async def main(bootstrap: str, topic: str, group: str, db_path: str, dlq: str) -> None:
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS effects (event_id TEXT PRIMARY KEY, item TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS deliveries (n INTEGER PRIMARY KEY AUTOINCREMENT)")

    async def apply(event: Event, delivery: Delivery) -> None:
        db.execute("BEGIN")
        db.execute("INSERT INTO deliveries DEFAULT VALUES")
        db.execute(
            "INSERT INTO effects (event_id, item) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (str(event.id), event.key),
        )
        db.execute("COMMIT")

    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=bootstrap, dead_letter_topic=dlq, batch_size=100),
        service="exactly-once",
    )
    await bus.start()
    consumer = bus.consumer([topic], group, apply)
    stopping: list[asyncio.Future[None]] = []

    def stop() -> None:
        stopping.append(asyncio.ensure_future(consumer.stop()))

    install_stop_signals(stop)
    try:
        await consumer.run()
    finally:
        await bus.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
