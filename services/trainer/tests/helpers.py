"""Helpers for driving the trainer worker through a bus in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.events import Event


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


def events_on(bus: InMemoryBus, topic: str) -> list[Event]:
    return [decode(m) for m in bus._logs[topic]]
