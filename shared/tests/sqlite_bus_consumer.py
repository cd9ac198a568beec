"""A consumer process for the SIGKILL test of the durable embedded bus.

It handles the events of TOPIC in GROUP on the bus log at DB: each handled key is appended to
EFFECTS (one line, flushed); an event whose key starts with ``HANG`` writes ``STARTED`` first and
then never returns, so the test can kill the process in the middle of a handler.

Usage: python sqlite_bus_consumer.py DB TOPIC GROUP EFFECTS STARTED
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from eostream.shared.bus import Delivery
from eostream.shared.bus.sqlite import SqliteBus
from eostream.shared.events import Event


async def main(db: str, topic: str, group: str, effects: str, started: str) -> None:
    bus = SqliteBus(Path(db), service="sigkill-test")
    await bus.start()

    async def handle(event: Event, delivery: Delivery) -> None:
        if event.key.startswith("HANG"):
            scratch = Path(started + ".tmp")  # renamed: the test never sees an empty file
            scratch.write_text(f"{event.key}@{delivery.offset}\n")
            scratch.replace(started)
            await asyncio.Event().wait()  # until SIGKILL
        with open(effects, "a", encoding="utf-8") as out:
            out.write(event.key + "\n")

    await bus.consumer([topic], group, handle).run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
