"""Hot swap: 20 promotions while scenes are being classified. No request fails, every result
names a version that was live while it ran, old sessions are freed, and memory does not creep."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from eostream.inference.service import InferenceService
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import ModelPromoted

SWAPS = 20


async def test_twenty_swaps_under_load(
    service: InferenceService,
    bus: InMemoryBus,
    boadella_item: Callable[[str], Path],
    make_model: Callable[..., ModelPromoted],
) -> None:
    events = [make_model(str(v), seed=v) for v in range(1, SWAPS + 2)]
    item_href = boadella_item("2020-06-21")
    item = json.loads(item_href.read_text())
    pipeline, holder = service.pipeline, service.deployment.holder
    await asyncio.to_thread(service.deployment.deploy, events[0])

    stop = threading.Event()
    gate = threading.Event()  # cleared only for the instant RSS is sampled between requests
    gate.set()
    lock = threading.Lock()
    busy = [0]
    failures: list[BaseException] = []
    observed: list[tuple[int, int, int]] = []  # (live version before, used, live version after)
    sessions: list[weakref.ref[Any]] = []

    def live() -> int:
        model = holder.current
        assert model is not None
        return int(model.info.version)

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            gate.wait()
            with lock:
                busy[0] += 1
            n += 1
            before = live()
            try:
                scene = dict(item, id=f"load-{worker}-{n}")
                outcome = pipeline.classify_item(scene, str(item_href))
            except BaseException as exc:
                failures.append(exc)
                return
            finally:
                with lock:
                    busy[0] -= 1
            props = outcome.record.item["properties"]
            assert props["eostream:model_version"] == outcome.record.model_version
            observed.append((before, int(outcome.record.model_version), live()))

    workers = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    while len(observed) < 8 and not failures:  # warm up before the first swap
        await asyncio.sleep(0.05)
    process = psutil.Process()
    rss: list[int] = []
    try:
        for index, event in enumerate(events[1:], start=1):
            model = holder.current
            assert model is not None
            sessions.append(weakref.ref(model.session))
            await bus.publish(topics.MODELS_PROMOTED, event)
            while live() != index + 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.15)  # let the load run on the new model
            gate.clear()  # sample RSS between requests, so in-flight buffers do not count
            while busy[0]:
                await asyncio.sleep(0.005)
            gc.collect()
            rss.append(process.memory_info().rss)
            gate.set()
        for _ in range(600):  # let one request finish on the last version before stopping
            if any(used == SWAPS + 1 for _, used, _ in observed) or failures:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        gate.set()
        for w in workers:
            await asyncio.to_thread(w.join)

    assert not failures, f"requests failed during swaps: {failures[:3]}"
    assert len(observed) >= SWAPS, "the load ran throughout the swaps"
    for before, used, after in observed:
        assert before <= used <= after, "a result names a version that was not live during it"
    assert {used for _, used, _ in observed} >= {1, SWAPS + 1}
    assert holder.wait_drained(timeout=10)
    gc.collect()
    assert all(ref() is None for ref in sessions), "retired sessions were freed"
    assert holder.swaps == SWAPS + 1
    first, last = rss[0], rss[-1]
    logging.getLogger(__name__).info("RSS per swap (MiB): %s", [r // 2**20 for r in rss])
    logging.getLogger(__name__).info(
        "RSS after swap 1: %.0f MiB, after swap %d: %.0f MiB; %d requests, 0 failed",
        first / 2**20,
        SWAPS,
        last / 2**20,
        len(observed),
    )
    assert last <= first * 1.10, f"RSS crept from {first / 2**20:.0f} MiB to {last / 2**20:.0f} MiB"
    history = service.results.deployments(100)
    assert [h["version"] for h in history[:2]] == [str(SWAPS + 1), str(SWAPS)]


async def test_promotions_of_other_models_are_ignored(
    settings: object, make_model: Callable[..., ModelPromoted]
) -> None:
    from eostream.inference.wiring import build_service
    from eostream.shared.bus.base import Delivery

    cfg = settings.model_copy(update={"model_name": "eurosat", "model_alias": "champion"})  # type: ignore[attr-defined]
    svc = build_service(cfg, consume=False)
    await svc.start()
    try:
        where = Delivery(topics.MODELS_PROMOTED, 0, 0, None)
        await svc.on_model(make_model("1"), where)
        await svc.on_model(make_model("2", name="someone-else"), where)
        await svc.on_model(make_model("3").model_copy(update={"alias": "challenger"}), where)
        model = svc.deployment.current
        assert model is not None and (model.info.name, model.info.version) == ("eurosat", "1")
    finally:
        await svc.stop()


async def test_a_bad_promotion_keeps_the_live_model(
    service: InferenceService,
    bus: InMemoryBus,
    make_model: Callable[..., ModelPromoted],
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("1"))
    good = make_model("2")
    tampered = good.model_copy(update={"sha256": "f" * 64})
    await bus.publish(topics.MODELS_PROMOTED, tampered)
    for _ in range(200):
        if bus.size(bus.dead_letter_topic):
            break
        await asyncio.sleep(0.02)
    dead = await bus.read_dead_letters(limit=5)
    assert len(dead) == 1 and "sha256" in dead[0].reason
    model = service.deployment.current
    assert model is not None and model.info.version == "1"
    assert service.results.deployments(5)[0]["status"] == "failed"
