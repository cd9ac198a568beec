"""One bridge transaction at a time, even when the task awaiting one is cancelled (a stop after
the drain timeout): its thread cannot be stopped, so the lock is kept until the thread ends,
and a rollback or a gate asked for meanwhile waits for it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from eostream.registry_bridge.settings import BridgeSettings

from .conftest import make_bridge


async def test_a_cancelled_transaction_keeps_the_lock_until_its_thread_ends(
    bridge_settings: BridgeSettings,
) -> None:
    bridge = make_bridge(bridge_settings)
    started, release = threading.Event(), threading.Event()
    running: set[str] = set()
    overlaps: list[list[str]] = []
    guard = threading.Lock()

    def operation(name: str, wait: bool) -> str:
        with guard:
            running.add(name)
            if len(running) > 1:
                overlaps.append(sorted(running))
        if wait:
            started.set()
            release.wait(60)
        with guard:
            running.discard(name)
        return name

    gate = asyncio.create_task(bridge._transaction(operation, "A-gate", True))
    assert await asyncio.to_thread(started.wait, 60)
    gate.cancel()  # as BridgeService.stop does after the drain timeout
    rollback = asyncio.create_task(bridge._transaction(operation, "B-rollback", False))
    try:
        done, _ = await asyncio.wait({rollback}, timeout=1.0)
        assert not done, "a second transaction ran while the cancelled one's thread still worked"
        assert bridge.lock.locked()
    finally:
        release.set()
    assert await rollback == "B-rollback"
    with pytest.raises(asyncio.CancelledError):
        await gate  # the cancellation is still delivered, once the thread is done
    assert overlaps == []
    assert not bridge.lock.locked()
