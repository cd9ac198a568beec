"""The bridge's work queue and the reconcile loop that refills it.

Webhooks, ModelVersionRegistered events and the reconcile loop only *queue* work; one worker
task carries it out in order, so nothing runs twice at once. A failure leaves the version
unhandled (no ``eostream.gate`` tag) and the next reconcile pass queues it again: the registry
is the source of truth, the queue is a fast path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from eostream.registry_bridge import metrics
from eostream.registry_bridge.bridge import Bridge
from eostream.shared import tags

log = logging.getLogger(__name__)

Item = tuple[str, str | None]  # (model name, version) or (model name, None): check the champion


#: the ``eostream.gate`` values the bridge writes
VERDICTS = (tags.GATE_PASSED, tags.GATE_FAILED, tags.GATE_REFUSED)


def needs_gate(version_tags: Mapping[str, str], status: str) -> bool:
    """Pure: whether the reconcile loop should queue a version: never gated, tagged with a value
    the bridge never writes (``Passed``, set outside it: the bridge gates it, as it gates a
    ``passed`` tag with no verdict on record), or passed but never promoted (a crash between the
    verdict and the promotion; the bridge decides whether to resume)."""
    if status != "READY":
        return False
    gate = version_tags.get(tags.GATE)
    if gate not in VERDICTS:
        return True
    return gate == tags.GATE_PASSED and tags.PROMOTED_AT not in version_tags


def pending(versions: Iterable[tuple[str, Mapping[str, str], str]]) -> list[str]:
    """Pure: versions (version, tags, status) to queue, oldest first."""
    todo = [v for v, t, status in versions if needs_gate(t, status)]
    return sorted(todo, key=lambda v: (len(v), v))


class Worker:
    def __init__(self, bridge: Bridge, names: Iterable[str]) -> None:
        self.bridge = bridge
        self.names = tuple(names)
        self.queue: asyncio.Queue[tuple[Item, str]] = asyncio.Queue()
        self._queued: set[Item] = set()
        self.last_reconcile_ok = False
        self.reconcile_passes = 0
        self.idle = asyncio.Event()  # set while waiting for work, clear while handling an item
        self.idle.set()
        self._stopping = False

    async def enqueue(self, name: str, version: str | None, source: str) -> None:
        if name not in self.names:
            log.info("ignoring %s: not a watched model (%s)", name, ", ".join(self.names))
            return
        item = (name, version)
        if item not in self._queued:
            self._queued.add(item)
            await self.queue.put((item, source))

    async def run(self) -> None:
        while not self._stopping:
            (name, version), source = await self.queue.get()
            self._queued.discard((name, version))
            self.idle.clear()
            try:
                if version is None:
                    await self.bridge.sync_champion(name)
                else:
                    outcome = await self.bridge.handle_version(name, version, source)
                    log.info("%s v%s: %s", name, version, outcome.state)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.HANDLING_ERRORS.labels(type(exc).__name__).inc()
                log.exception(
                    "handling %s v%s failed; the reconcile loop will retry", name, version
                )
            finally:
                self.queue.task_done()
                self.idle.set()

    async def drain(self, timeout: float) -> bool:
        """Take no new item; wait until the one in hand is done. Queued items are dropped: the
        registry is the source of truth and the next reconcile pass queues them again."""
        self._stopping = True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def reconcile_once(self) -> int:
        """Queue every unhandled version and a champion check per model; returns versions queued."""
        queued = 0
        registry = self.bridge.registry
        for name in self.names:
            versions = await asyncio.to_thread(registry.versions, name)
            for version in pending((v.version, v.tags, v.status) for v in versions):
                await self.enqueue(name, version, "reconcile")
                queued += 1
            await self.enqueue(name, None, "reconcile")
        return queued

    async def reconcile_forever(self, interval: float) -> None:
        delay = interval
        while True:
            try:
                queued = await self.reconcile_once()
                self.last_reconcile_ok = True
                self.reconcile_passes += 1
                delay = interval
                if queued:
                    log.info("reconcile: queued %d unhandled version(s)", queued)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_reconcile_ok = False
                delay = min(delay * 2, max(interval, 300.0))
                log.warning("reconcile failed (%s); next try in %.0fs", exc, delay)
            await asyncio.sleep(delay)
