"""SIGTERM's drain (`eostream inference serve`): the scene consumer takes no record published
after the stop, while a long request in flight still completes. uvicorn runs the app's lifespan
shutdown only once every request has ended, so the consumers are stopped before the server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from eostream.inference.api.app import create_app
from eostream.inference.cli import shutdown
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import ModelPromoted, SceneDiscovered
from eostream.shared.ops import OpsServer

#: How long a scene published after the stop is given to be (wrongly) classified; a scene
#: published before it is classified in well under a second here.
ABSENCE_WINDOW_S = 5.0


def _scene(href: Path, item_id: str) -> SceneDiscovered:
    return SceneDiscovered(
        item_id=item_id,
        item_href=str(href),
        datetime=datetime(2020, 2, 19, tzinfo=UTC),
        processing_level="L2A",
        bands=("B02", "B03", "B04"),
        source_name="test",
    )


async def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_stop_takes_no_new_scene_while_a_request_in_flight_completes(
    settings: InferenceSettings,
    bus: InMemoryBus,
    make_model: Callable[..., ModelPromoted],
    rkh_item: Path,
) -> None:
    service = build_service(settings, bus=bus)
    app = create_app(settings, service)
    entered, release = threading.Event(), threading.Event()

    @app.get("/slow")
    def slow() -> dict[str, bool]:  # a long synchronous request (a classification, say)
        entered.set()
        release.wait(60)
        return {"done": True}

    server = OpsServer(app, "127.0.0.1", 0)
    await server.start()  # its lifespan starts the service, as `serve` does
    stopping: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(service.deployment.deploy, make_model("1"))
        await bus.publish(topics.SCENES_DISCOVERED, _scene(rkh_item, "before-stop"))
        await _until(lambda: bus.size(topics.SCENES_CLASSIFIED) == 1, "the first scene")

        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            in_flight = asyncio.create_task(client.get("/slow"))
            await _until(entered.is_set, "the slow request to start")
            stopping = asyncio.create_task(shutdown(service, server))  # SIGTERM
            await asyncio.sleep(0.5)
            await bus.publish(topics.SCENES_DISCOVERED, _scene(rkh_item, "after-stop"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ABSENCE_WINDOW_S
            while loop.time() < deadline and bus.size(topics.SCENES_CLASSIFIED) == 1:
                await asyncio.sleep(0.1)
            assert not stopping.done(), "the server stopped before its request in flight ended"
            classified_during_drain = bus.size(topics.SCENES_CLASSIFIED) - 1
            release.set()
            response = await in_flight
        await stopping
    finally:
        release.set()
        if stopping is None:
            await server.stop()
    assert response.status_code == 200 and response.json() == {"done": True}
    assert classified_during_drain == 0, "the scene consumer took a record after SIGTERM"
    assert bus.size(topics.SCENES_CLASSIFIED) == 1
    assert bus.size(topics.SCENES_DISCOVERED) == 2  # left on the bus for the next replica
